"""Send cnnviz figures to whatever Lightning loggers the trainer has.

- TensorBoard gets an image (the mosaic), since it cannot show Plotly figures.
- Weights & Biases gets the Plotly figure (``wandb.Plotly``).
- MLflow gets the figure as an HTML artifact (``MlflowClient.log_figure``).
- CSV and other loggers get nothing: the run store has everything.

A logger whose optional package is missing is skipped with one warning; it never breaks training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import plotly.graph_objects as go
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["log_figure", "wants_figures"]

_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        rank_zero_warn(message)


def wants_figures(loggers: list[Logger]) -> bool:
    """Whether any logger takes Plotly figures (so they are worth building at each event)."""
    return any(isinstance(lg, (WandbLogger, MLFlowLogger)) for lg in loggers)


def _add_image(writer: Any, tag: str, image: Any, step: int, name: str) -> None:
    try:
        array = image() if callable(image) else image
        summary = _fast_image_summary(writer, tag, array)
        if summary is None:
            writer.add_image(tag, array, step, dataformats="HWC")
        else:
            writer.file_writer.add_summary(summary, step)
    except ImportError as err:  # e.g. PIL missing for the PNG encoding
        _warn_once(name, f"cnnviz: skipping {name} output ({err}); the run store still has it")


_JPEG_ABOVE_PIXELS = 64 * 64


def _fast_image_summary(writer: Any, tag: str, image: np.ndarray) -> Any:
    """The image summary ``SummaryWriter.add_image`` would write, encoded for cheap logging.

    Images above 64x64 pixels are JPEG (quality 90), smaller ones PNG at level 1.

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
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    else:  # small filter mosaics stay exact
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    png = Summary.Image(
        height=height,
        width=width,
        colorspace=1 if grey else 3,
        encoded_image_string=buf.getvalue(),
    )
    return Summary(value=[Summary.Value(tag=tag, image=png)])


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
        The class names of the loggers that received something.
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
        name = type(logger).__name__
        try:
            if isinstance(logger, TensorBoardLogger):
                if image is not None:
                    writer = logger.experiment
                    if submit is None:
                        _add_image(writer, tag, image, step, name)
                    else:
                        submit(_add_image, writer, tag, image, step, name)
                    sent.append(name)
            elif isinstance(logger, WandbLogger):
                f = fig()
                if f is not None:
                    import wandb

                    logger.log_metrics({tag: wandb.Plotly(f)}, step=step)
                    sent.append(name)
            elif isinstance(logger, MLFlowLogger):
                f = fig()
                if f is not None:
                    safe = tag.replace("/", "_")
                    logger.experiment.log_figure(logger.run_id, f, f"cnnviz/{safe}_step{step}.html")
                    sent.append(name)
        except ImportError as err:  # optional logger package missing
            _warn_once(name, f"cnnviz: skipping {name} output ({err}); the run store still has it")
    return sent
