"""Logger output with the real logger packages, as users run them; nothing touches the network.

- TensorBoard: Lightning's ``TensorBoardLogger``; the event file is read back with
  tensorboard's ``EventAccumulator``.
- MLflow: ``MLFlowLogger`` with a local ``file:`` store in ``tmp_path``; read back with
  ``MlflowClient``.
- Weights & Biases: ``WandbLogger(offline=True)``; read back from the offline run directory
  (its transaction log ``run-<id>.wandb`` and the media files it writes).
- CSV or no logger: nothing, while the run store has everything.

Each check compares what a logger received with the run store, the single source of truth.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest
from cnnviz_test_helpers import case_module, make_lenet, make_loaders, make_trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cnnviz.loggers as cnnviz_loggers
from cnnviz.callbacks import ActivationMaps, FilterWeights, ReceptiveFields, TopActivations
from cnnviz.callbacks.activation_maps import LOGGER_PROBE_IMAGES, _maps_image
from cnnviz.callbacks.filter_weights import _filter_image
from cnnviz.callbacks.receptive_fields import _erf_image
from cnnviz.callbacks.top_activations import _mosaic
from cnnviz.figures.activations import activations_figure
from cnnviz.figures.filters import filters_figure
from cnnviz.loggers import log_figure, wants_figures
from cnnviz.store import RunStore

LAYERS = ["net.0", "net.2", "net.3", "net.5"]  # the tiny LeNet's conv and pooling layers
CONVS = ["net.0", "net.3"]
TAGS = {f"cnnviz/filters/{n}" for n in CONVS} | {f"cnnviz/activations/{n}" for n in LAYERS}
ALL_TAGS = TAGS | {f"cnnviz/erf/{n}" for n in LAYERS} | {f"cnnviz/topk/{n}" for n in LAYERS}


def _all_callbacks() -> list[Callback]:
    """The callbacks that send loggers something (ERF and top-k included)."""
    return [
        FilterWeights(),
        ActivationMaps(num_probe=3),
        ReceptiveFields(num_probe=2),
        TopActivations(k=3),
    ]


@pytest.fixture(autouse=True)
def fresh_logger_state(monkeypatch) -> None:
    """Each test starts with no warned-about packages and no skipped loggers."""
    monkeypatch.setattr(cnnviz_loggers, "_WARNED", set())
    monkeypatch.setattr(cnnviz_loggers, "_BROKEN", weakref.WeakValueDictionary())


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A local MLflow file store in ``tmp_path``; no telemetry."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x refuses it otherwise
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pytest.importorskip("mlflow")
    return f"file:{tmp_path}/mlruns"


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch) -> Iterator[Path]:
    """W&B strictly offline and silent, every file it writes under ``tmp_path / "wandb"``."""
    root = tmp_path / "wandb"
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)  # no API key, entity or base URL from the developer's shell
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DIR": str(root),
        "WANDB_CACHE_DIR": str(root / "cache"),
        "WANDB_CONFIG_DIR": str(root / "config"),
        "WANDB_DATA_DIR": str(root / "data"),
        "WANDB_ARTIFACT_DIR": str(root / "artifacts"),
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_X_DISABLE_STATS": "true",
        "WANDB_X_DISABLE_MACHINE_INFO": "true",
        "WANDB_X_SAVE_REQUIREMENTS": "false",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    wandb = pytest.importorskip("wandb")
    yield root
    wandb.finish()
    wandb.teardown()  # stops W&B's service process


def _fit(
    tmp_path: Path,
    logger: Logger | list[Logger] | bool,
    *,
    epochs: int = 1,
    callbacks: list[Callback] | None = None,
) -> RunStore:
    """A real fit of the tiny LeNet (3 steps an epoch); returns its run store."""
    train, val = make_loaders()
    if callbacks is None:
        callbacks = [FilterWeights(), ActivationMaps(num_probe=3)]
    trainer = make_trainer(tmp_path, callbacks, logger=logger, max_epochs=epochs)
    trainer.fit(case_module(make_lenet()), train, val)
    (manifest,) = Path(tmp_path).rglob("manifest.jsonl")
    store = RunStore(manifest.parent)
    assert store.run_info()["status"] == "finished"
    return store


def _steps(store: RunStore, kind: str, layer: str) -> list[int]:
    steps = [r.step for r in store.records(kind, layer=layer)]
    assert steps, f"the store has no {kind} records for {layer}"
    return steps


def _store_figure(store: RunStore, record: Any) -> dict[str, Any]:
    """The JSON of the figure cnnviz builds for a logger from one store record."""
    arrays, label = store.load(record), record.meta["label"]
    if record.kind == "filters":
        fig = filters_figure(
            [arrays["weight"]], [label], layer=record.layer, rgb=record.meta["rgb"]
        )
    else:
        channels = arrays["channels"].tolist()
        fig = activations_figure([arrays["maps"]], [label], layer=record.layer, channels=channels)
    return json.loads(fig.to_json())


def _assert_store_complete(store: RunStore, events: int) -> None:
    assert len(store.records("filters")) == len(CONVS) * events
    assert len(store.records("activations")) == len(LAYERS) * events


# ------------------------------------------------------------------------------- TensorBoard
def _tb_events(logger: TensorBoardLogger) -> EventAccumulator:
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def _decoded(shot: Any) -> tuple[np.ndarray, str]:
    image = Image.open(io.BytesIO(shot.encoded_image_string))
    return np.asarray(image.convert("RGB")), image.format


def _assert_same_image(shot: Any, expected: np.ndarray) -> None:
    """The logged image is the one cnnviz draws from the store's arrays (PNG exactly)."""
    got, fmt = _decoded(shot)
    assert (shot.height, shot.width) == expected.shape[:2] == got.shape[:2]
    if fmt == "PNG":
        np.testing.assert_array_equal(got, expected)
    else:  # large mosaics are JPEG (quality 90, no chroma subsampling)
        assert fmt == "JPEG"
        mse = np.mean((got.astype(float) - expected) ** 2)
        # noise patches (random inputs) are JPEG's worst case: ~30 dB; with the default 4:2:0
        # chroma subsampling the colours of few-pixel patches are lost: ~12 dB
        assert 10 * np.log10(255**2 / mse) > 25


def test_tensorboard_gets_image_grids_of_what_the_store_has(tmp_path) -> None:
    logger = TensorBoardLogger(tmp_path)
    store = _fit(tmp_path, logger, epochs=2, callbacks=_all_callbacks())
    events = _tb_events(logger)

    assert set(events.Tags()["images"]) == ALL_TAGS
    assert {"train/loss_epoch", "val/loss"} <= set(events.Tags()["scalars"])  # Lightning's own
    assert not [t for t in events.Tags()["scalars"] if t.startswith("cnnviz")]

    for layer in CONVS:  # filters: every event, drawn from the stored weights
        records = store.records("filters", layer=layer)
        shots = events.Images(f"cnnviz/filters/{layer}")
        assert [s.step for s in shots] == [r.step for r in records] == [0, 3, 6]
        for shot, record in zip(shots, records, strict=True):
            _assert_same_image(
                shot, _filter_image(store.load(record)["weight"], record.meta["rgb"])
            )
    first = _decoded(events.Images("cnnviz/filters/net.0")[0])[0]
    assert not (first[..., 0] == first[..., 1]).all()  # the RGB first layer is in colour

    for layer in LAYERS:
        records = store.records("activations", layer=layer)
        shots = events.Images(f"cnnviz/activations/{layer}")
        assert [s.step for s in shots] == [r.step for r in records]
        for shot, record in zip(shots, records, strict=True):
            maps = store.load(record)["maps"]  # [3 probe inputs, C, H, W]: the store has all
            assert maps.shape[0] == 3
            _assert_same_image(shot, _maps_image(maps))  # TensorBoard: the first two only
            h, w = maps.shape[2:]
            assert shot.height == LOGGER_PROBE_IMAGES * h + LOGGER_PROBE_IMAGES - 1 == 2 * h + 1
            assert shot.width == maps.shape[1] * w + maps.shape[1] - 1
        grey = Image.open(io.BytesIO(shots[-1].encoded_image_string))
        assert grey.mode == "L"  # grey maps are stored with one channel

        records = store.records("erf", layer=layer)
        shots = events.Images(f"cnnviz/erf/{layer}")
        assert [s.step for s in shots] == [r.step for r in records] == [0, 3, 6]
        for shot, record in zip(shots, records, strict=True):
            _assert_same_image(shot, _erf_image(store.load(record)["map"]))

        records = store.records("topk", layer=layer)  # after each validation epoch
        shots = events.Images(f"cnnviz/topk/{layer}")
        assert [s.step for s in shots] == [r.step for r in records] == [3, 6]
        for shot, record in zip(shots, records, strict=True):
            _assert_same_image(shot, _mosaic(store.load(record)["patches"]))


# ------------------------------------------------------------------------------------- MLflow
def _artifacts(client: Any, run_id: str, path: str | None = None) -> list[str]:
    files = []
    for info in client.list_artifacts(run_id, path):
        files += _artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return files


def test_mlflow_file_store_gets_html_figures(tmp_path, mlflow_uri) -> None:
    from mlflow.tracking import MlflowClient

    logger = MLFlowLogger(experiment_name="cnnviz-test", tracking_uri=mlflow_uri)
    store = _fit(tmp_path, logger, callbacks=_all_callbacks())
    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = logger.run_id

    expected = {
        f"{tag}/step_{step:07d}.html"
        for tag in ALL_TAGS
        for step in _steps(store, tag.split("/")[1], tag.split("/")[2])
    }
    # the start of training and the end of epoch 0 (top-k: after the validation epoch only)
    assert len(expected) == 2 * len(ALL_TAGS) - len(LAYERS)
    assert set(_artifacts(client, run_id)) == expected

    local = client.download_artifacts(run_id, "cnnviz/filters/net.3/step_0000003.html", tmp_path)
    html = Path(local).read_text()
    assert "<html>" in html[:100]
    assert "cdn.plot.ly" in html and "Plotly.newPlot" in html  # plotly.js from the CDN
    figure = _figure_in_html(html)
    assert "net.3" in figure["layout"]["title"]["text"]
    assert [t["type"] for t in figure["data"]] == ["heatmap"]
    record = store.records("filters", layer="net.3")[-1]
    assert figure == _store_figure(store, record)  # the figure of the stored arrays

    history = client.get_metric_history(run_id, "train/loss_epoch")  # Lightning's own metrics
    assert len(history) == 1 and np.isfinite(history[0].value)
    assert not [k for k in client.get_run(run_id).data.metrics if k.startswith("cnnviz")]


def _figure_in_html(html: str) -> dict[str, Any]:
    """The data and layout that a plotly HTML file passes to ``Plotly.newPlot``."""
    start = html.index("Plotly.newPlot(")
    decoder = json.JSONDecoder()
    rest = html[html.index("[", start) :]
    data, end = decoder.raw_decode(rest)
    rest = rest[end:].lstrip().lstrip(",").lstrip()
    layout, _ = decoder.raw_decode(rest)
    return {"data": data, "layout": layout}


# ------------------------------------------------------------------------------ Weights & Biases
def _wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B transaction log (LevelDB log format: 32 KiB blocks of chunks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, parts = 32768, 7, b""  # 7: ident, magic and version
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, start, pos = data[pos + 7 : pos + 7 + length], pos, pos + 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            parts = chunk
        elif kind == 3:  # middle
            parts += chunk
        elif kind == 4:  # last
            yield parts + chunk
        else:  # zeros: the rest of the block is unused
            pos = start + left


def _wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """The rows W&B recorded for ``wandb.log`` calls: ``{key: value}``, nested keys joined."""
    from wandb.proto import wandb_internal_pb2

    (log,) = run_dir.glob("run-*.wandb")
    rows, kinds = [], []
    for raw in _wandb_records(log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kinds.append(record.WhichOneof("record_type"))
        if kinds[-1] == "history":
            rows.append(
                {
                    (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    assert kinds[-1] == "exit", "the run is not finished: its log may be incomplete"
    return rows


def test_wandb_offline_gets_plotly_figures(tmp_path, wandb_offline) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="cnnviz-test")
    store = _fit(tmp_path, logger, callbacks=_all_callbacks())
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    wandb.teardown()  # waits for W&B's service process to write and close the run's files

    rows = _wandb_history(run_dir)
    assert any("train/loss_epoch" in row for row in rows)  # Lightning's metrics still arrive
    assert {k.rsplit("/", 1)[0] for row in rows for k in row if k.startswith("cnnviz/")} == ALL_TAGS
    for tag in ALL_TAGS:
        _, kind, layer = tag.split("/")
        logged = [row for row in rows if f"{tag}/_type" in row]
        assert [row[f"{tag}/_type"] for row in logged] == ["plotly-file"] * len(logged)
        # plotted against the trainer's global step, like Lightning's metrics
        assert [row["trainer/global_step"] for row in logged] == _steps(store, kind, layer)
        for row, record in zip(logged, store.records(kind, layer=layer), strict=True):
            figure = json.loads((run_dir / "files" / row[f"{tag}/path"]).read_text())
            assert layer in figure["layout"]["title"]["text"] and figure["data"]
            if kind in ("filters", "activations"):
                assert figure == _store_figure(store, record)  # the figure of the stored arrays
    types = {v for row in rows for k, v in row.items() if k.endswith("/_type")}
    assert types == {"plotly-file"}  # no images: those are for TensorBoard


# ------------------------------------------------------------------------------- CSV and none
@pytest.mark.parametrize("kind", ["csv", "none"])
def test_csv_or_no_logger_gets_nothing_and_the_store_has_everything(tmp_path, kind) -> None:
    logger = CSVLogger(tmp_path) if kind == "csv" else False
    store = _fit(tmp_path, logger, epochs=2)
    _assert_store_complete(store, events=3)
    files = {p.name for p in tmp_path.rglob("*") if p.is_file() and "cnnviz" not in p.parts}
    if kind == "csv":
        assert store.root.parent.name == "version_0"
        assert files == {"metrics.csv", "hparams.yaml"}
        header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
        assert "train/loss_epoch" in header and "cnnviz" not in header
    else:
        assert store.root == tmp_path / "cnnviz" and files == set()
    maps = store.load(store.records("activations", layer="net.0")[-1])["maps"]
    assert maps.shape[0] == 3  # every probe input, not only what TensorBoard would get


# ------------------------------------------------------------ missing packages, failing loggers
def test_missing_optional_package_warns_once_and_training_goes_on(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # TensorBoard images need Pillow to encode
    logger = TensorBoardLogger(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = _fit(tmp_path, logger, epochs=2)
    skipped = [w for w in caught if "skipping TensorBoardLogger output" in str(w.message)]
    assert len(skipped) == 1, [str(w.message) for w in skipped]  # once, though 18 images were due
    assert "PIL" in str(skipped[0].message)
    _assert_store_complete(store, events=3)
    events = _tb_events(logger)
    assert events.Tags()["images"] == []
    assert "train/loss_epoch" in events.Tags()["scalars"]  # the logger itself still works


def test_a_logger_that_raises_gets_one_warning_and_nothing_more(
    tmp_path, monkeypatch, mlflow_uri
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from torch.utils.tensorboard.writer import FileWriter

    calls = {"mlflow": 0, "tensorboard": 0}

    def log_figure_fails(self: Any, *args: Any, **kwargs: Any) -> None:
        calls["mlflow"] += 1
        raise MlflowException("the tracking server went away")

    add_summary = FileWriter.add_summary

    def images_fail(self: Any, summary: Any, *args: Any, **kwargs: Any) -> None:
        if any(v.HasField("image") for v in summary.value):  # on cnnviz's store thread
            calls["tensorboard"] += 1
            raise OSError(28, "No space left on device")
        add_summary(self, summary, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_figure", log_figure_fails)
    monkeypatch.setattr(FileWriter, "add_summary", images_fail)
    tensorboard = TensorBoardLogger(tmp_path)
    mlflow = MLFlowLogger(experiment_name="cnnviz-test", tracking_uri=mlflow_uri)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = _fit(tmp_path, [tensorboard, mlflow], epochs=2)

    assert calls == {"mlflow": 1, "tensorboard": 1}  # skipped after the first failure
    messages = [str(w.message) for w in caught if "cnnviz sends it nothing more" in str(w.message)]
    assert len(messages) == 2
    assert any("MLFlowLogger" in m and "tracking server went away" in m for m in messages)
    assert any("TensorBoardLogger" in m and "No space left" in m for m in messages)
    _assert_store_complete(store, events=3)
    assert "train/loss_epoch" in _tb_events(tensorboard).Tags()["scalars"]
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert len(client.get_metric_history(mlflow.run_id, "train/loss_epoch")) == 2


# ---------------------------------------------------------------------------- log_figure itself
def test_log_figure_routing_and_lazy_figures(tmp_path, mlflow_uri) -> None:
    from mlflow.tracking import MlflowClient

    built: list[int] = []

    def build() -> go.Figure:
        built.append(1)
        return go.Figure(go.Heatmap(z=[[0, 1]]), layout={"title": {"text": "t"}})

    image = np.zeros((4, 4, 3), np.uint8)
    csv, tb = CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path / "tb")
    assert not wants_figures([csv, tb])
    assert log_figure([csv], "t", step=1, figure=build, image=image) == []
    assert log_figure([csv, tb], "t", step=1, figure=build, image=image) == ["TensorBoardLogger"]
    assert built == []  # no figure is built when no logger takes one
    assert log_figure([tb], "t", step=3, figure=build) == []  # no image: nothing for TensorBoard

    first = MLFlowLogger(experiment_name="a", tracking_uri=mlflow_uri)
    second = MLFlowLogger(experiment_name="b", tracking_uri=mlflow_uri)
    assert wants_figures([csv, first])
    sent = log_figure([first, tb, second, csv], "cnnviz/x/a b", step=2, figure=build)
    assert sent == ["MLFlowLogger", "MLFlowLogger"] and built == [1]  # built once, shared
    client = MlflowClient(tracking_uri=mlflow_uri)
    for logger in (first, second):
        assert _artifacts(client, logger.run_id) == ["cnnviz/x/a_b/step_0000002.html"]

    tb.experiment.flush()
    assert [s.step for s in _tb_events(tb).Images("t")] == [1]


@pytest.mark.parametrize(
    ("tag", "step", "path"),
    [
        ("cnnviz/filters/features.0", 12, "cnnviz/filters/features.0/step_0000012.html"),
        (
            "cnnviz/activations/layer1.0:conv",
            3,
            "cnnviz/activations/layer1.0_conv/step_0000003.html",
        ),
        ("cnnviz/erf/../x", 0, "cnnviz/erf/_/x/step_0000000.html"),
    ],
)
def test_mlflow_artifact_paths(tag, step, path) -> None:
    assert cnnviz_loggers._artifact_file(tag, step) == path
