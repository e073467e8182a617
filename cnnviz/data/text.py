"""Synthetic sentences for Kim's sentence-classification CNN: the class is in the word order.

A sentence is ``seq_len`` token ids. Ids are laid out as ``0`` = ``<pad>`` (reserved, never
generated), ``1..16`` = 16 *key words* (``k0`` .. ``k15``) and the rest filler words
(``w17`` ...). A lexicon of 8 base triples of distinct key words is drawn from ``seed`` (the same
for both splits); class ``c`` owns the ``c``-th permutation of every triple, so all classes use
the same words and differ only in their order (class 1's trigrams are rotations of class 0's).
A bag-of-words model therefore cannot separate the classes, while a width-3 convolution with
max-over-time pooling can.

Each sentence is filler with one or two trigrams of its class planted, plus zero to three lone
key words as distractors. Trigrams and lone words sit in slots of five tokens separated by at
least one filler word, so no other key-word trigram can form by accident: the label is "the class
whose trigram occurs", which :meth:`SentenceDataset.rule_label` recomputes from the tokens.
Labels are ``i % num_classes`` (balanced).
"""

from __future__ import annotations

import itertools
import operator
from typing import ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cnnviz.data._rng import sample_generator, single_thread
from cnnviz.data.base import CnnvizDataModule, check_int, check_seed, check_split

__all__ = ["SentenceDataModule", "SentenceDataset"]

NUM_KEY_WORDS = 16
NUM_TRIGRAMS = 8
_FIRST_KEY, _FIRST_FILLER = 1, 1 + NUM_KEY_WORDS
_SLOT = 5
_MIN_FILLER = 16
# Permutations of a triple; classes 0 and 1 are rotations of each other.
_PERMS = ((0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2))


def _word(token: int) -> str:
    if token == 0:
        return "<pad>"
    if token < _FIRST_FILLER:
        return f"k{token - _FIRST_KEY}"
    return f"w{token}"


def _class_names(num_classes: int) -> list[str]:
    if num_classes == 2:
        return ["negative", "positive"]
    if num_classes == 3:
        return ["negative", "neutral", "positive"]
    return [f"class_{k}" for k in range(num_classes)]


def _check_args(
    owner: str, vocab_size: object, seq_len: object, num_classes: object, seed: object
) -> tuple[int, int, int, int]:
    vocab_size = check_int(owner, "vocab_size", vocab_size, _FIRST_FILLER + _MIN_FILLER)
    seq_len = check_int(owner, "seq_len", seq_len, 2 * _SLOT, 4096)
    num_classes = check_int(owner, "num_classes", num_classes, 2, len(_PERMS))
    return vocab_size, seq_len, num_classes, check_seed(owner, seed)


def make_lexicon(seed: int, num_classes: int) -> Tensor:
    """Return the class trigrams: ``int64 (num_classes, 8, 3)`` token ids.

    The 8 base triples are distinct sets of 3 distinct key words, drawn from ``seed``; class
    ``c`` uses permutation ``c`` of each, so no trigram belongs to two classes.
    """
    gen = sample_generator(seed, "sentences/lexicon", 0)
    triples: list[tuple[int, ...]] = []
    seen: set[frozenset[int]] = set()
    while len(triples) < NUM_TRIGRAMS:
        words = (torch.randperm(NUM_KEY_WORDS, generator=gen)[:3] + _FIRST_KEY).tolist()
        if frozenset(words) not in seen:
            seen.add(frozenset(words))
            triples.append(tuple(words))
    base = torch.tensor(triples)
    return torch.stack([base[:, list(_PERMS[c])] for c in range(num_classes)])


class SentenceDataset(Dataset):
    """Synthetic token sequences whose class is given by planted ordered trigrams.

    Args:
        num_samples: Number of sentences.
        vocab_size: Vocabulary size (>= 33: pad, 16 key words, >= 16 filler words).
        seq_len: Tokens per sentence, 10 to 4096.
        num_classes: 2 (negative/positive) to 6.
        seed: Seed of the lexicon and the sentences.
        split: ``"train"`` or ``"val"`` (same lexicon, disjoint sentences).

    Example:
        >>> ds = SentenceDataset(100, vocab_size=1000, seq_len=64)
        >>> tokens, label = ds[0]
        >>> tokens.shape, tokens.dtype
        (torch.Size([64]), torch.int64)
    """

    def __init__(
        self,
        num_samples: int,
        vocab_size: int = 1000,
        seq_len: int = 64,
        num_classes: int = 2,
        *,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        owner = "SentenceDataset"
        self.num_samples = check_int(owner, "num_samples", num_samples, 1)
        self.vocab_size, self.seq_len, self.num_classes, self.seed = _check_args(
            owner, vocab_size, seq_len, num_classes, seed
        )
        self.split = check_split(owner, split)
        #: ``int64 (num_classes, 8, 3)``: the trigrams that define each class.
        self.trigrams = make_lexicon(seed, self.num_classes)
        #: ``int64 (num_samples,)``: ``i % num_classes``.
        self.labels = torch.arange(self.num_samples) % self.num_classes
        #: ``int64 (num_samples, seq_len)``: the token ids.
        self.tokens = torch.empty((self.num_samples, self.seq_len), dtype=torch.int64)
        with single_thread():
            for i in range(self.num_samples):
                self.tokens[i] = self._sentence(i)

    def _sentence(self, i: int) -> Tensor:
        gen = sample_generator(self.seed, f"sentences/{self.split}", i)
        tokens = torch.randint(_FIRST_FILLER, self.vocab_size, (self.seq_len,), generator=gen)
        slots = torch.randperm(self.seq_len // _SLOT, generator=gen).tolist()
        n_plant = 1 + int(torch.randint(0, 2, (), generator=gen)) if len(slots) >= 3 else 1
        n_lone = min(int(torch.randint(0, 4, (), generator=gen)), len(slots) - n_plant)
        which = torch.randint(0, NUM_TRIGRAMS, (n_plant,), generator=gen).tolist()
        offsets = torch.randint(0, 2, (n_plant,), generator=gen).tolist()
        lone = torch.randint(_FIRST_KEY, _FIRST_FILLER, (n_lone,), generator=gen).tolist()
        trigrams = self.trigrams[i % self.num_classes]
        for slot, j, off in zip(slots[:n_plant], which, offsets, strict=True):
            start = slot * _SLOT + off
            tokens[start : start + 3] = trigrams[j]
        for slot, word in zip(slots[n_plant : n_plant + n_lone], lone, strict=True):
            tokens[slot * _SLOT + 2] = word
        return tokens

    @property
    def class_names(self) -> list[str]:
        """Name of each class."""
        return _class_names(self.num_classes)

    @property
    def vocab(self) -> list[str]:
        """Word of every token id: ``<pad>``, ``k0`` .. ``k15``, ``w17`` ..."""
        return [_word(t) for t in range(self.vocab_size)]

    def decode(self, tokens: Tensor) -> list[str]:
        """Map a 1-D tensor of token ids to words."""
        return [_word(int(t)) for t in tokens]

    def rule_label(self, tokens: Tensor) -> int | None:
        """Recompute the label from the tokens: the class one of whose trigrams occurs.

        Returns:
            The class, or ``None`` if no class trigram (or trigrams of two classes) occur.
        """
        found = set()
        windows = {tuple(w) for w in tokens.unfold(0, 3, 1).tolist()}
        for c, j in itertools.product(range(self.num_classes), range(NUM_TRIGRAMS)):
            if tuple(self.trigrams[c, j].tolist()) in windows:
                found.add(c)
        return found.pop() if len(found) == 1 else None

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(tokens int64 (seq_len,), label int64)``."""
        i = operator.index(index)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(f"SentenceDataset: index {index} out of range for {self.num_samples}.")
        return self.tokens[i].clone(), self.labels[i].clone()


class SentenceDataModule(CnnvizDataModule):
    """Synthetic sentences for Kim's CNN (token ids ``(seq_len,)`` -> ``num_classes``).

    Args:
        vocab_size: Vocabulary size (>= 33).
        seq_len: Tokens per sentence (10 to 4096).
        num_classes: 2 (negative/positive) to 6.
        num_train: Training sentences.
        num_val: Validation sentences.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the lexicon and sentences.

    Example:
        >>> dm = SentenceDataModule(vocab_size=1000, seq_len=64)
        >>> dm.model_kwargs
        {'num_classes': 2, 'vocab_size': 1000, 'input_size': 64}
    """

    name: ClassVar[str] = "sentences"
    task: ClassVar[str] = "text"

    def __init__(
        self,
        vocab_size: int = 1000,
        seq_len: int = 64,
        num_classes: int = 2,
        num_train: int = 5000,
        num_val: int = 1000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        owner = "SentenceDataModule"
        self.vocab_size, self.seq_len, self._num_classes, self.seed = _check_args(
            owner, vocab_size, seq_len, num_classes, seed
        )
        self.num_train = check_int(owner, "num_train", num_train, 1)
        self.num_val = check_int(owner, "num_val", num_val, 1)
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        """``["negative", "positive"]`` for 2 classes (3: adds ``"neutral"``; else ``class_k``)."""
        return _class_names(self._num_classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(seq_len,)``: one sentence of token ids."""
        return (self.seq_len,)

    @property
    def model_kwargs(self) -> dict[str, int]:
        """``{"num_classes", "vocab_size", "input_size": seq_len}`` for Kim's CNN."""
        return {
            "num_classes": self._num_classes,
            "vocab_size": self.vocab_size,
            "input_size": self.seq_len,
        }

    @property
    def vocab(self) -> list[str]:
        """Word of every token id (``<pad>``, ``k0`` .. ``k15``, ``w17`` ...).

        The report shows token attributions on these words.
        """
        return [_word(t) for t in range(self.vocab_size)]

    def decode(self, tokens: Tensor) -> list[str]:
        """Map a 1-D tensor of token ids to words (see :attr:`SentenceDataset.vocab`)."""
        return [_word(int(t)) for t in tokens]

    def _build_dataset(self, split: str) -> SentenceDataset:
        n = self.num_train if split == "train" else self.num_val
        return SentenceDataset(
            n, self.vocab_size, self.seq_len, self._num_classes, seed=self.seed, split=split
        )
