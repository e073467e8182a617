"""Under DDP (2 CPU processes, gloo) ``TopActivations`` finds the same top-k as one process.

Lightning's ``strategy="ddp"`` starts the other rank by running the same command again, so the
DDP fit runs in a small script started with ``subprocess``. Each rank validates its share of the
data (a ``DistributedSampler``: 27 samples padded to 28, so one sample is seen twice); the
callback maps batch positions back to data-set indices through the sampler, merges the ranks'
results on every rank and rank zero writes. The model does not change during the fit
(``lr=0``), so the single-process run sees exactly the same network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from cnnviz_test_helpers import PlainModule, make_loaders, make_trainer

from cnnviz.callbacks.top_activations import TopActivations
from cnnviz.store import RunStore

TESTS = Path(__file__).resolve().parents[1]
LAYERS = ("features.0", "features.2", "features.3")

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import lightning.pytorch as pl
    from conftest import PlainModule, make_loaders
    from cnnviz.callbacks.receptive_fields import ReceptiveFields
    from cnnviz.callbacks.top_activations import TopActivations

    root = sys.argv[1]
    pl.seed_everything(0)
    train, val = make_loaders(n_train=32, n_val=27, batch_size=4)
    top = TopActivations(k=5, max_channels=None)
    rf = ReceptiveFields(num_probe=4)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=root, callbacks=[top, rf],
    )
    trainer.fit(PlainModule(seed=0, lr=0.0), train, val)
    out = {{
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "sampler": type(trainer.val_dataloaders.sampler).__name__,
        "writes": [top.store is not None, rf.store is not None],
        "events": [top.events, rf.events],
        "pid": os.getpid(),
    }}
    with open(os.path.join(root, f"rank{{trainer.global_rank}}.json"), "w") as fh:
        json.dump(out, fh)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_top_k_equals_one_process_on_the_same_data(tmp_path) -> None:
    script = tmp_path / "ddp_topk.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MASTER_PORT", None)
    ddp_root = tmp_path / "ddp"
    ddp_root.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script), str(ddp_root)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a rank waiting on the other would hang: fail instead
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((ddp_root / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert {r["sampler"] for r in ranks} == {"DistributedSampler"}
    assert ranks[0]["writes"] == [True, True] and ranks[1]["writes"] == [False, False]
    assert ranks[0]["events"] == ranks[1]["events"] == [2, 3]  # same cadence on every rank

    pl.seed_everything(0)
    train, val = make_loaders(n_train=32, n_val=27, batch_size=4)
    single_root = tmp_path / "single"
    cb = TopActivations(k=5, max_channels=None)
    make_trainer(single_root, [cb], max_epochs=2).fit(PlainModule(seed=0, lr=0.0), train, val)

    ddp, single = RunStore(ddp_root / "cnnviz"), RunStore(single_root / "cnnviz")
    assert {r.id.split("-")[-3] for r in ddp} == {str(ranks[0]["pid"])}  # rank 0 wrote it all
    assert len(ddp.records("layer_table")) == 1 and len(ddp.records("erf")) == 3 * 3
    seen: set[int] = set()
    for layer in LAYERS:
        got, want = ddp.records("topk", layer=layer), single.records("topk", layer=layer)
        assert (
            [r.meta["label"] for r in got]
            == [r.meta["label"] for r in want]
            == [
                "epoch 1",
                "epoch 2",
            ]
        )
        for g, w in zip(got, want, strict=True):
            a, b = ddp.load(g), single.load(w)
            assert set(a) == set(b) == {"values", "samples", "positions", "patches", "padding"}
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{layer} {key}")
            assert (b["samples"] >= 0).all() and b["samples"].max() < 27
            seen |= set(a["samples"].ravel().tolist())
    assert {i % 2 for i in seen - {0}} == {0, 1}  # winners from both ranks' shares of the data
