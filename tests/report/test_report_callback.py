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
    assert not (tmp_path / "report_live").exists()  # not live: no live page, no data folder


def _index(run: Path) -> dict[str, Any]:
    text = (run / "report_live" / "index.js").read_text()
    m = re.search(r"cnnvizLive\.index\((.*)\);", text, re.S)
    assert m is not None
    return json.loads(m.group(1))


def test_live_page_during_the_fit_and_the_final_report_at_the_end(tmp_path: Path) -> None:
    seen: list[tuple[str, str, list[str]]] = []
    report = Report(live=True)

    class Spy(pl.Callback):  # runs after Report: looks at the page each epoch
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if report._pending is not None:
                report._pending.result(timeout=60)  # the update runs on the store's thread
            page = (tmp_path / "report.html").read_text()
            index = _index(tmp_path)
            layers = [row[0] for row in index["layers"]]
            seen.append(("cnnviz-live" in page, index["status"], layers))

    _fit(tmp_path, [FilterWeights(), ActivationMaps(num_probe=4), report, Spy()])
    # while training: the small live page, fed by report_live/ (status from run.json)
    assert [s[:2] for s in seen] == [(True, "running"), (True, "running")]
    assert "net.features.c1" in seen[-1][2]
    assert report.updates >= 2 and report.builds == 1  # the single file is built once
    # at the end: report.html is the final single-file report; open live pages are told
    html = (tmp_path / "report.html").read_text()
    assert 'id="cnnviz-live"' not in html and _config(html)["status"] == "finished"
    assert "net.features.c1" in html and "cdn.plot.ly" not in html
    index = _index(tmp_path)
    assert index["final"] is True
    assert sorted(p.name for p in (tmp_path / "report_live").iterdir()) == ["index.js"]
    assert not list(tmp_path.glob(".report.html.*"))  # no temporary file left behind
    # nothing changed in the store: no rebuild; a deleted page is written again
    report._build(final=True)
    assert report.builds == 1
    (tmp_path / "report.html").unlink()
    report._build(final=True)
    assert report.builds == 2


def test_step_events_update_the_live_page(tmp_path: Path) -> None:
    labels: list[str] = []
    report = Report(live=True, every_n_epochs=100)

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if report._pending is not None:
                report._pending.result(timeout=60)
            labels.append(_index(tmp_path)["event"])

    cb = FilterWeights(every_n_epochs=None, every_n_steps=1, log_on_start=False, budget=None)
    _fit(tmp_path, [cb, report, Spy()])
    assert labels == ["step 1", "step 2", "step 3", "step 4"]  # each step's filters, as they come


def test_live_updates_run_off_the_training_thread(tmp_path: Path) -> None:
    import threading

    threads: list[str] = []
    report = Report(live=True)
    original = report._live_update

    def spy() -> None:
        threads.append(threading.current_thread().name)
        original()

    report._live_update = spy  # type: ignore[method-assign]
    _fit(tmp_path, [FilterWeights(), report])
    assert threads and all(t.startswith("cnnviz-store") for t in threads)


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
        ({"progress": 1}, TypeError, "`progress` must be a bool"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Report(**kwargs)
