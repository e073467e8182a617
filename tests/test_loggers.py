"""Logger output: TensorBoard images, W&B Plotly figures, MLflow HTML figures, CSV: store only.

wandb and mlflow are not installed here, so their loggers are subclasses that skip the
constructor (which needs the package) and record what they receive.
"""

from __future__ import annotations

import io
import sys
import types
import warnings
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import plotly.graph_objects as go
import pytest
from cnnviz_test_helpers import case_module, make_lenet, make_loaders, make_trainer
from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from PIL import Image

import cnnviz.loggers as cnnviz_loggers
from cnnviz.callbacks import ActivationMaps, FilterWeights
from cnnviz.loggers import log_figure, wants_figures
from cnnviz.store import RunStore

TAGS = {
    "cnnviz/filters/net.0",
    "cnnviz/filters/net.3",
    "cnnviz/activations/net.0",
    "cnnviz/activations/net.2",
    "cnnviz/activations/net.3",
    "cnnviz/activations/net.5",
}


class RecordingTensorBoard(TensorBoardLogger):
    """A TensorBoardLogger whose SummaryWriter is a recording fake."""

    def __init__(self, save_dir: Any) -> None:
        super().__init__(save_dir)
        self.fake = MagicMock(name="SummaryWriter")

    @property
    def experiment(self) -> Any:
        return self.fake


class _OfflineLogger:
    """Shared overrides: no package, no network; metrics are recorded."""

    def _offline_init(self) -> None:
        Logger.__init__(self)  # type: ignore[arg-type]
        self.metrics: list[tuple[dict[str, Any], int | None]] = []

    @property
    def name(self) -> str:
        return "offline"

    @property
    def version(self) -> str:
        return "0"

    @property
    def save_dir(self) -> None:
        return None

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def finalize(self, status: str = "success") -> None:
        pass

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        pass


class OfflineWandb(_OfflineLogger, WandbLogger):
    def __init__(self) -> None:
        self._offline_init()

    @property
    def experiment(self) -> Any:
        return MagicMock(name="wandb.Run")


class OfflineMLflow(_OfflineLogger, MLFlowLogger):
    def __init__(self) -> None:
        self._offline_init()
        self.client = MagicMock(name="MlflowClient")

    @property
    def experiment(self) -> Any:
        return self.client

    @property
    def run_id(self) -> str:
        return "run-1"


class FakePlotly:
    def __init__(self, figure: go.Figure) -> None:
        self.figure = figure


@pytest.fixture
def fresh_warnings(monkeypatch) -> None:
    monkeypatch.setattr(cnnviz_loggers, "_WARNED", set())


def _fit(tmp_path, logger: Any, epochs: int = 2) -> RunStore:
    train, val = make_loaders()
    trainer = make_trainer(
        tmp_path, [FilterWeights(), ActivationMaps(num_probe=3)], logger=logger, max_epochs=epochs
    )
    trainer.fit(case_module(make_lenet()), train, val)
    return (
        RunStore(tmp_path / "cnnviz")
        if trainer.log_dir is None
        else RunStore(f"{trainer.log_dir}/cnnviz")
    )


def test_tensorboard_gets_images(tmp_path) -> None:
    logger = RecordingTensorBoard(tmp_path)
    store = _fit(tmp_path, logger)
    calls = logger.fake.add_image.call_args_list
    by_tag: dict[str, list[int]] = {}
    for call in calls:
        tag, image, step = call.args
        assert call.kwargs == {"dataformats": "HWC"}
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        by_tag.setdefault(tag, []).append(step)
    assert set(by_tag) == TAGS
    assert all(steps == [0, 3, 6] for steps in by_tag.values())
    assert store.root.parent.name == "version_0" and len(store.records("filters")) == 6


def test_wandb_without_the_package_warns_once_and_training_continues(
    tmp_path, monkeypatch, fresh_warnings
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    logger = OfflineWandb()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = _fit(tmp_path, logger)
    skipped = [w for w in caught if "skipping OfflineWandb output" in str(w.message)]
    assert len(skipped) == 1  # once, although 18 figures were due
    assert not any(k.startswith("cnnviz/") for metrics, _ in logger.metrics for k in metrics)
    assert any("train/loss_epoch" in metrics for metrics, _ in logger.metrics)
    assert len(store.records("activations")) == 12 and store.run_info()["status"] == "finished"


def test_wandb_gets_plotly_figures(tmp_path, monkeypatch, fresh_warnings) -> None:
    fake_wandb = types.ModuleType("wandb")
    fake_wandb.Plotly = FakePlotly  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    logger = OfflineWandb()
    _fit(tmp_path, logger, epochs=1)
    figures = [(k, v, step) for m, step in logger.metrics for k, v in m.items() if k in TAGS]
    assert {k for k, _, _ in figures} == TAGS
    assert all(isinstance(v, FakePlotly) and isinstance(v.figure, go.Figure) for _, v, _ in figures)
    assert sorted({step for _, _, step in figures}) == [0, 3]
    filt = next(v.figure for k, v, s in figures if k == "cnnviz/filters/net.3" and s == 3)
    assert "net.3" in filt.layout.title.text and len(filt.data) == 1


def test_mlflow_gets_html_figures(tmp_path, fresh_warnings) -> None:
    logger = OfflineMLflow()
    _fit(tmp_path, logger, epochs=1)
    calls = logger.client.log_figure.call_args_list
    assert len(calls) == 2 * len(TAGS)
    names = set()
    for call in calls:
        run_id, figure, artifact = call.args
        assert run_id == "run-1" and isinstance(figure, go.Figure)
        assert artifact.startswith("cnnviz/") and artifact.endswith(".html")
        names.add(artifact)
    assert "cnnviz/cnnviz_filters_net.0_step3.html" in names
    assert "cnnviz/cnnviz_activations_net.5_step0.html" in names


def test_csv_logger_gets_nothing_but_the_store_has_everything(tmp_path) -> None:
    store = _fit(tmp_path, CSVLogger(tmp_path))
    assert store.root.parent.name == "version_0"
    assert len(store.records("filters")) == 6 and len(store.records("activations")) == 12


def test_log_figure_routing_and_lazy_figures(tmp_path, monkeypatch, fresh_warnings) -> None:
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Plotly=FakePlotly))
    built: list[int] = []

    def build() -> go.Figure:
        built.append(1)
        return go.Figure()

    image = np.zeros((4, 4, 3), np.uint8)
    csv, tb = CSVLogger(tmp_path), RecordingTensorBoard(tmp_path)
    assert not wants_figures([csv, tb])
    assert log_figure([csv], "t", step=1, figure=build, image=image) == []
    assert log_figure([csv, tb], "t", step=1, figure=build, image=image) == ["RecordingTensorBoard"]
    assert built == []  # no figure is built when no logger takes one
    wandb_logger, mlflow_logger = OfflineWandb(), OfflineMLflow()
    assert wants_figures([csv, mlflow_logger])
    sent = log_figure([wandb_logger, mlflow_logger, csv], "t", step=2, figure=build)
    assert sent == ["OfflineWandb", "OfflineMLflow"] and built == [1]  # built once, shared
    assert log_figure([tb], "t", step=3, figure=build) == []  # no image: nothing for TensorBoard


def test_tensorboard_event_file_holds_the_images(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cnnviz.callbacks.activation_maps import LOGGER_PROBE_IMAGES

    logger = TensorBoardLogger(tmp_path)
    store = _fit(tmp_path, logger, epochs=1)
    logger.finalize("success")
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == TAGS
    shots = events.Images("cnnviz/activations/net.0")
    assert [s.step for s in shots] == [0, 3]
    maps = store.load(store.records("activations", layer="net.0")[-1])["maps"]  # [3, 6, 12, 12]
    # TensorBoard gets the first LOGGER_PROBE_IMAGES (2) probe rows; 1-pixel gaps.
    assert LOGGER_PROBE_IMAGES == 2
    assert (shots[-1].height, shots[-1].width) == (2 * 12 + 1, 6 * 12 + 5)
    assert maps.shape == (3, 6, 12, 12)  # the store keeps every probe input
    decoded = Image.open(io.BytesIO(shots[-1].encoded_image_string))
    assert decoded.format == "PNG" and decoded.mode == "L"  # grey maps: one channel
    assert decoded.size == (shots[-1].width, shots[-1].height)
    first = events.Images("cnnviz/filters/net.0")[0]  # the first layer's filters, in colour
    assert Image.open(io.BytesIO(first.encoded_image_string)).mode == "RGB"
