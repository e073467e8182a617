"""The Report callback in real (tiny) fits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from cnnviz.callbacks import ActivationMaps, FilterWeights
from cnnviz.callbacks.report import Report
from cnnviz.data import ShapesDataModule
from cnnviz.module import CaseStudyModule


def _fit(
    tmp_path: Path,
    callbacks: list[pl.Callback],
    module: pl.LightningModule | None = None,
    **kwargs: Any,
) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    dm = ShapesDataModule(image_size=32, num_train=64, num_val=16, batch_size=32)
    module = module or CaseStudyModule("lenet5", data_info=dm.model_kwargs, scheduler="none")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
        **kwargs,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


def _config(html: str) -> dict[str, Any]:
    m = re.search(r'id="cnnviz-config">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


def test_report_is_written_at_the_end_of_fit(tmp_path: Path) -> None:
    report = Report()
    other = Report(path=tmp_path / "out" / "r.html", plotly_js="cdn")  # a second page
    _fit(tmp_path, [FilterWeights(), ActivationMaps(num_probe=4), report, other])
    out = tmp_path / "report.html"
    assert report.target == out and out.exists()
    html = out.read_text()
    assert _config(html)["status"] == "finished"
    assert report.builds == 1  # not live: once, at the end
    assert "net.features.c1" in html and "cdn.plot.ly" not in html
    assert "cdn.plot.ly" in (tmp_path / "out" / "r.html").read_text()


def test_live_report_is_rewritten_after_each_event(tmp_path: Path) -> None:
    seen: list[str] = []

    class Spy(pl.Callback):  # runs after Report: reads the page each epoch
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen.append(_config((tmp_path / "report.html").read_text())["status"])

    report = Report(live=True)
    _fit(tmp_path, [FilterWeights(), ActivationMaps(num_probe=4), report, Spy()])
    assert seen == ["running", "running"]  # the page reloads itself while training runs
    assert report.builds == 4  # start, 2 epochs, end
    html = (tmp_path / "report.html").read_text()
    cfg = _config(html)
    assert {k: cfg[k] for k in ("live", "status", "reload_ms", "stale_s")} == {
        "live": True,
        "status": "finished",
        "reload_ms": 5000,
        "stale_s": 60.0,
    }
    assert set(cfg) == {"live", "status", "reload_ms", "heartbeat", "built", "stale_s", "template"}
    assert not list(tmp_path.glob(".report.html.*"))  # no temporary file left behind
    # nothing changed in the store: no rebuild; a deleted page is written again
    report._build(final=True)
    assert report.builds == 4
    (tmp_path / "report.html").unlink()
    report._build(final=True)
    assert report.builds == 5


def test_step_events_trigger_live_rebuilds(tmp_path: Path) -> None:
    report = Report(live=True, every_n_epochs=100)
    _fit(
        tmp_path, [FilterWeights(every_n_epochs=None, every_n_steps=1, log_on_start=False), report]
    )
    assert report.builds == 6  # train start, 4 optimizer steps, the end


def test_a_failed_fit_still_gets_a_page(tmp_path: Path) -> None:
    class Boom(CaseStudyModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.current_epoch == 1:
                raise RuntimeError("exploded <here>")
            return super().training_step(batch, batch_idx)

    dm_info = {"num_classes": 9, "in_channels": 3, "input_size": 32}
    with pytest.raises(RuntimeError, match="exploded"):
        _fit(
            tmp_path,
            [FilterWeights(), Report()],
            module=Boom("lenet5", data_info=dm_info, scheduler="none"),
        )
    html = (tmp_path / "report.html").read_text()
    assert _config(html)["status"] == "failed"
    assert "The run failed: RuntimeError: exploded &lt;here&gt;" in html


def test_report_without_cnnviz_data_writes_a_message(tmp_path: Path) -> None:
    _fit(tmp_path, [Report()])
    html = (tmp_path / "report.html").read_text()
    assert "No cnnviz callback recorded anything" in html


def test_report_must_come_last(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match="Report: it must come after every cnnviz callback, but FilterWeights follow",
    ):
        _fit(tmp_path, [Report(), FilterWeights()])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"live": "yes"}, TypeError, "`live`"),
        ({"plotly_js": "web"}, ValueError, "`plotly_js` must be 'inline' or 'cdn'"),
        ({"every_n_epochs": 0}, ValueError, "`every_n_epochs`"),
        ({"every_n_epochs": True}, ValueError, "`every_n_epochs`"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Report(**kwargs)
