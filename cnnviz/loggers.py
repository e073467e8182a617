"""Send cnnviz figures to whatever Lightning loggers the trainer has.

- TensorBoard gets an image (the mosaic), since it cannot show Plotly figures; the tag is the
  figure's tag (``cnnviz/filters/<layer>``), the step the trainer's global step.
- Weights & Biases gets the Plotly figure (``wandb.Plotly``), through the logger's
  ``log_metrics``, so it is plotted against ``trainer/global_step`` like Lightning's metrics.
- MLflow gets the figure as an HTML artifact (``MlflowClient.log_figure``) at
  ``<tag>/step_<global step>.html``; like every ``log_figure`` HTML file, it loads plotly.js
  from the CDN when opened.
- CSV and other loggers get nothing: the run store has everything.

The run store is the single source of truth: logging is a copy, and a logger never takes
training down. A logger whose optional package is missing is skipped with one warning (one per
logger class); a logger that raises while cnnviz logs to it gets one warning and nothing more
from cnnviz for as long as the logger object lives, normally one fit (Lightning's own metrics
logging to it is left alone).
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import plotly.graph_objects as go
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["log_figure", "wants_figures"]

_WARNED: set[str] = set()
#: Loggers that failed while cnnviz logged to them, by ``id``: cnnviz sends them nothing more.
_BROKEN: weakref.WeakValueDictionary[int, Logger] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()  # TensorBoard images are written on the store's thread


def _warn_once(key: str, message: str) -> None:
    with _LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    rank_zero_warn(message)


def _is_broken(logger: Logger) -> bool:
    return _BROKEN.get(id(logger)) is logger


def _give_up(logger: Logger, tag: str, err: Exception) -> None:
    """Skip ``logger`` from now on, with one warning (per missing package, or per logger)."""
    name = type(logger).__name__
    with _LOCK:
        if _is_broken(logger):
            return
        _BROKEN[id(logger)] = logger
    if isinstance(err, ImportError):  # an optional package is missing: the same for every logger
        _warn_once(name, f"cnnviz: skipping {name} output ({err}); the run store still has it")
    else:
        rank_zero_warn(
            f"cnnviz: {name} raised while cnnviz logged {tag!r} to it "
            f"({type(err).__name__}: {err}); cnnviz sends it nothing more (training goes on, "
            "and the run store still has everything)"
        )


def wants_figures(loggers: list[Logger]) -> bool:
    """Whether any logger takes Plotly figures (so they are worth building at each event)."""
    return any(isinstance(lg, (WandbLogger, MLFlowLogger)) and not _is_broken(lg) for lg in loggers)


def _add_image(logger: Logger, writer: Any, tag: str, image: Any, step: int) -> None:
    """Write one image summary (on the caller's or the store's thread)."""
    if _is_broken(logger):  # failed since this job was queued
        return
    try:
        array = image() if callable(image) else image
    except ImportError as err:  # e.g. a missing image library
        _give_up(logger, tag, err)
        return
    try:
        summary = _fast_image_summary(writer, tag, array)
        if summary is None:
            writer.add_image(tag, array, step, dataformats="HWC")
        else:
            writer.file_writer.add_summary(summary, step)
    except Exception as err:  # PIL missing for the encoding, a closed writer, a full disk...
        _give_up(logger, tag, err)


_JPEG_ABOVE_PIXELS = 64 * 64


def _fast_image_summary(writer: Any, tag: str, image: np.ndarray) -> Any:
    """The image summary ``SummaryWriter.add_image`` would write, encoded for cheap logging.

    Images above 64x64 pixels are JPEG (quality 90; colour without chroma subsampling, which
    would smear the colour of the few-pixel patches in filter and top-k mosaics), smaller ones
    PNG at level 1.

    ``add_image`` encodes at PIL's default level 6: three times slower for a few percent less
    space (a 263x527 mosaic: 22 ms vs 7 ms). Grey images (all channels equal) are stored as
    one-channel PNGs: TensorBoard without TensorFlow checksums every event in pure Python
    (~0.1 us per byte, holding the GIL), so bytes cost training time. Returns ``None`` unless
    ``writer`` is torch's ``SummaryWriter`` with an open file writer and ``image`` is
    ``[H, W, 3]`` uint8.
    """
    try:  # tensorboard and PIL are optional (tensorboardX writers take the plain route)
        import io

        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    if not isinstance(writer, SummaryWriter) or getattr(writer, "file_writer", None) is None:
        return None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return None

    grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
    pixels = image[..., 0] if grey else image  # a third of the bytes for TensorBoard to checksum
    buf = io.BytesIO()
    height, width = image.shape[:2]
    if height * width > _JPEG_ABOVE_PIXELS:
        # Activation mosaics are noisy: PNG stays ~1 byte/pixel, JPEG q90 is 4x smaller, which
        # is 4x less pure-Python checksumming on the training process (TensorBoard shows both).
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90, subsampling=0)
    else:  # small filter mosaics stay exact
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    png = Summary.Image(
        height=height,
        width=width,
        colorspace=1 if grey else 3,
        encoded_image_string=buf.getvalue(),
    )
    return Summary(value=[Summary.Value(tag=tag, image=png)])


def _artifact_file(tag: str, step: int) -> str:
    """MLflow artifact path of a figure: ``cnnviz/filters/net.0/step_0000003.html``.

    Zero-padded steps sort in order in MLflow's artifact browser; characters that are not safe
    in a file name, and empty or ``..`` path parts, are replaced.
    """
    parts = [re.sub(r"[^\w.\-]", "_", p) for p in tag.split("/")]
    parts = [p if p.strip(".") else "_" for p in parts]
    return "/".join([*parts, f"step_{step:07d}.html"])


def _send_figure(logger: Logger, tag: str, figure: go.Figure, step: int) -> None:
    if isinstance(logger, WandbLogger):
        import wandb

        # Not `experiment.log(..., step=step)`: W&B drops rows whose step is below its own
        # counter; Lightning's `log_metrics` records `trainer/global_step` instead.
        logger.log_metrics({tag: wandb.Plotly(figure)}, step=step)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_figure(logger.run_id, figure, _artifact_file(tag, step))


def log_figure(
    loggers: list[Logger],
    tag: str,
    *,
    step: int,
    figure: go.Figure | Callable[[], go.Figure] | None = None,
    image: np.ndarray | Callable[[], np.ndarray] | None = None,
    submit: Callable[..., Any] | None = None,
) -> list[str]:
    """Log one figure/image to each logger that can take it.

    A logger that raises (or whose optional package is missing) gets one warning and is
    skipped from then on; its error never reaches the caller. Errors of ``figure`` and
    ``image`` themselves (cnnviz's own code) and of ``submit`` do reach it.

    Args:
        loggers: ``trainer.loggers``.
        tag: Name such as ``cnnviz/filters/features.0``.
        step: The global step to log at.
        figure: The figure, or a function building it (called at most once, only if needed).
        image: ``[H, W, 3]`` uint8 image for image-only loggers (TensorBoard), or a function
            making it (called only if needed).
        submit: Runs TensorBoard's image encoding and writing elsewhere, as
            ``submit(fn, *args)`` (e.g. :meth:`cnnviz.store.RunStore.submit`, a background
            thread); ``None`` runs it here. The writer object is looked up here, on the
            caller's thread.

    Returns:
        The class names of the loggers that were sent something (TensorBoard images handed
        to ``submit`` count as sent).

    Example:
        >>> log_figure(trainer.loggers, "cnnviz/filters/features.0", step=trainer.global_step,
        ...            figure=lambda: filters_figure([w], ["epoch 1"], layer="features.0"))
    """
    built: list[go.Figure] = []

    def fig() -> go.Figure | None:
        if figure is None:
            return None
        if not built:
            built.append(figure() if callable(figure) else figure)
        return built[0]

    sent = []
    for logger in loggers:
        if _is_broken(logger):
            continue
        name = type(logger).__name__
        if isinstance(logger, TensorBoardLogger):
            if image is None:
                continue
            try:
                writer = logger.experiment
            except Exception as err:
                _give_up(logger, tag, err)
                continue
            if submit is None:
                _add_image(logger, writer, tag, image, step)
                if _is_broken(logger):
                    continue
            else:
                submit(_add_image, logger, writer, tag, image, step)
            sent.append(name)
        elif isinstance(logger, (WandbLogger, MLFlowLogger)):
            f = fig()
            if f is None:
                continue
            try:
                _send_figure(logger, tag, f, step)
            except Exception as err:  # an optional package missing, a lost server, a full disk...
                _give_up(logger, tag, err)
                continue
            sent.append(name)
    return sent
