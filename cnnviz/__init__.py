"""cnnviz: see what your convolutional network learns, while it trains.

PyTorch Lightning callbacks record filter weights, activation maps, receptive fields and Captum
attributions to a run store, as Plotly figures for your loggers and one HTML report per run.

The public surface (loaded lazily, so ``import cnnviz.analysis`` does not import Lightning):

- :func:`list_layers`, :func:`select_layers`, :class:`LayerCapture`, :func:`capture_activations`
- :class:`CaseStudyModule`, :class:`RunStore`
- ``cnnviz.models``, ``cnnviz.data``, ``cnnviz.callbacks``, ``cnnviz.figures``
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "list_layers": "cnnviz.analysis.layers",
    "select_layers": "cnnviz.analysis.layers",
    "LayerCapture": "cnnviz.analysis.capture",
    "capture_activations": "cnnviz.analysis.capture",
    "hook_count": "cnnviz.analysis.guard",
    "CaseStudyModule": "cnnviz.module",
    "RunStore": "cnnviz.store",
    "build_report": "cnnviz.report",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnnviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
