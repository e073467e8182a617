from __future__ import annotations

from collections import Counter

import pytest
import torch

from cnnviz.data import SentenceDataModule, SentenceDataset


def _trigram_classes(tokens: list[int], trigrams: torch.Tensor) -> set[int]:
    """Independent rule: the classes one of whose trigrams occurs in ``tokens``."""
    table = {tuple(t): c for c in range(trigrams.shape[0]) for t in trigrams[c].tolist()}
    windows = zip(tokens, tokens[1:], tokens[2:], strict=False)
    return {table[w] for w in windows if w in table}


def test_label_is_the_class_of_the_planted_trigrams() -> None:
    ds = SentenceDataset(400, vocab_size=200, seq_len=40, seed=3)
    for i in range(len(ds)):
        tokens, label = ds[i]
        assert _trigram_classes(tokens.tolist(), ds.trigrams) == {int(label)}, i
        assert ds.rule_label(tokens) == int(label)


def test_classes_share_words_and_differ_only_in_order() -> None:
    ds = SentenceDataset(10, num_classes=3)
    t = ds.trigrams
    assert t.shape == (3, 8, 3)
    for j in range(8):
        assert sorted(t[0, j].tolist()) == sorted(t[1, j].tolist()) == sorted(t[2, j].tolist())
    flat = [tuple(x) for x in t.reshape(-1, 3).tolist()]
    assert len(set(flat)) == len(flat)
    # Key-word counts per class are alike, so unigrams do not give the label away.
    ds = SentenceDataset(600, seed=1)
    counts = [Counter(), Counter()]
    for i in range(len(ds)):
        tokens, label = ds[i]
        counts[int(label)].update(w for w in tokens.tolist() if w <= 16)
    total = [sum(c.values()) for c in counts]
    assert abs(total[0] - total[1]) / max(total) < 0.15


def test_tokens_dtype_range_determinism_balance() -> None:
    ds = SentenceDataset(60, vocab_size=100, seq_len=30, seed=5)
    tokens, label = ds[0]
    assert tokens.dtype == torch.int64 and tokens.shape == (30,) and label.dtype == torch.int64
    assert ds.tokens.min() >= 1 and ds.tokens.max() < 100
    assert torch.bincount(ds.labels).tolist() == [30, 30]
    again = SentenceDataset(60, vocab_size=100, seq_len=30, seed=5)
    assert torch.equal(again.tokens, ds.tokens)
    assert not torch.equal(
        SentenceDataset(60, vocab_size=100, seq_len=30, seed=6).tokens, ds.tokens
    )
    val = SentenceDataset(60, vocab_size=100, seq_len=30, seed=5, split="val")
    assert torch.equal(val.trigrams, ds.trigrams) and not torch.equal(val.tokens, ds.tokens)
    assert ds.decode(torch.tensor([0, 1, 16, 17, 99])) == ["<pad>", "k0", "k15", "w17", "w99"]
    assert len(ds.vocab) == 100


def test_datamodule_surface() -> None:
    dm = SentenceDataModule(vocab_size=500, seq_len=50, num_train=32, num_val=16, batch_size=8)
    assert dm.task == "text" and dm.num_classes == 2
    assert dm.class_names == ["negative", "positive"]
    assert dm.input_shape == (50,)
    assert dm.model_kwargs == {"num_classes": 2, "vocab_size": 500, "input_size": 50}
    assert SentenceDataModule(num_classes=3).class_names[1] == "neutral"
    torch.manual_seed(1)
    state = torch.get_rng_state()
    x, y = dm.probe(4)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == (4, 50) and x.dtype == torch.int64 and y.tolist() == [0, 1, 0, 1]
    assert dm.probe_masks(4) is None
    assert dm.decode(x[0])[:1] == SentenceDataset(16, 500, 50, split="val").decode(x[0])[:1]
    xb, _ = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 50)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"vocab_size": 20}, ValueError, "`vocab_size`"),
        ({"seq_len": 5}, ValueError, "`seq_len`"),
        ({"num_classes": 1}, ValueError, "`num_classes`"),
        ({"num_classes": 7}, ValueError, "`num_classes`"),
        ({"seq_len": 64.0}, TypeError, "`seq_len`"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SentenceDataModule(**kwargs)
