"""Under DDP (2 CPU processes, gloo) a fit with both callbacks finishes and only rank 0 writes.

Lightning's ``strategy="ddp"`` starts the other rank by running the same command again, so the
fit runs in a small script started with ``subprocess`` (not inside the pytest process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnnviz.store import RunStore

TESTS = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import torch
    import lightning.pytorch as pl
    from conftest import case_module, make_lenet, make_loaders  # tests/conftest.py
    from cnnviz.callbacks import ActivationMaps, FilterWeights

    root = sys.argv[1]
    pl.seed_everything(0)
    train, val = make_loaders(n_train=64, n_val=16, batch_size=8)
    fw = FilterWeights(every_n_steps=3)
    am = ActivationMaps(num_probe=4, every_n_steps=3)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=root, callbacks=[fw, am],
    )
    trainer.fit(case_module(make_lenet()), train, val)
    out = {{
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "events": [fw.events, am.events],
        "writes": [fw.store is not None, am.store is not None],
        "step": trainer.global_step,
        "pid": os.getpid(),
        "weight_sum": float(trainer.lightning_module.net[0].weight.sum()),
    }}
    with open(os.path.join(root, f"rank{{trainer.global_rank}}.json"), "w") as fh:
        json.dump(out, fh)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_two_cpu_processes_finish_and_only_rank_zero_writes(tmp_path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a rank waiting on the other would hang: fail instead
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["step"] == ranks[1]["step"] == 8  # 64 samples / 2 ranks / 8 per batch x 2
    assert ranks[0]["weight_sum"] == ranks[1]["weight_sum"]  # replicas stayed in sync
    # every rank counts the same events (same cadence); only global rank zero writes
    assert ranks[0]["events"] == ranks[1]["events"] == [5, 5]
    assert ranks[0]["writes"] == [True, True] and ranks[1]["writes"] == [False, False]
    store = RunStore(tmp_path / "cnnviz")
    filters = store.records("filters", layer="net.0")
    labels = ["start", "step 3", "epoch 1", "step 6", "epoch 2"]
    assert [r.meta["label"] for r in filters] == labels
    assert [r.meta["label"] for r in store.records("activations", layer="net.2")] == labels
    assert len(store.records("probe")) == 1
    assert {r.id.split("-")[-3] for r in store} == {str(ranks[0]["pid"])}  # written by rank 0
    assert store.run_info()["status"] == "finished"
