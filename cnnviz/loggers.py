"""Send cnnviz figures to whatever Lightning loggers the trainer has.

- TensorBoard gets an image (the mosaic), since it cannot show Plotly figures.
- Weights & Biases gets the Plotly figure (``wandb.Plotly``).
- MLflow gets the figure as an HTML artifact (``MlflowClient.log_figure``).
- CSV and other loggers get nothing: the run store has everything.

A logger whose optional package is missing is skipped with one warning; it never breaks training.
"""

from __future__ import annotations

from collections.abc import Callable

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


def log_figure(
    loggers: list[Logger],
    tag: str,
    *,
    step: int,
    figure: go.Figure | Callable[[], go.Figure] | None = None,
    image: np.ndarray | None = None,
) -> list[str]:
    """Log one figure/image to each logger that can take it.

    Args:
        loggers: ``trainer.loggers``.
        tag: Name such as ``cnnviz/filters/features.0``.
        step: The global step to log at.
        figure: The figure, or a function building it (called at most once, only if needed).
        image: ``[H, W, 3]`` uint8 image for image-only loggers (TensorBoard).

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
                    logger.experiment.add_image(tag, image, step, dataformats="HWC")
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
