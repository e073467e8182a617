"""cnnviz: see what your convolutional network learns, while it trains.

PyTorch Lightning callbacks record filter weights, activation maps, receptive fields and Captum
attributions to a run store, as Plotly figures for your loggers and one HTML report per run.

The public surface (loaded lazily, so ``import cnnviz.analysis`` does not import Lightning):

- :func:`list_layers`, :func:`select_layers`, :class:`LayerCapture`, :func:`capture_activations`
- :func:`receptive_fields`, :func:`effective_receptive_field`, :class:`ReceptiveField`
- :func:`find_readouts` (what each conv "fires": after its norm and activation),
  :func:`resolve_io` (how to call a model on a batch and read its class scores)
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
    "receptive_fields": "cnnviz.analysis.receptive_field",
    "effective_receptive_field": "cnnviz.analysis.receptive_field",
    "ReceptiveField": "cnnviz.analysis.receptive_field",
    "find_readouts": "cnnviz.analysis.readout",
    "resolve_io": "cnnviz.analysis.modelio",
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
