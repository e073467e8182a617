"""Captum attributions that are safe to compute on a model while it trains.

One entry point, :func:`attribute`, computes any of eleven attribution methods by name and
returns an :class:`AttributionResult`. Every call runs inside
:func:`cnnviz.analysis.guard.observe`, so it changes nothing the model or training owns: module
modes, ``requires_grad`` and ``.grad`` of parameters, BatchNorm buffers, in-place flags, the
torch, NumPy and Python RNG streams, and the hooks on the model are all as before the call, also
when Captum raises. It works inside ``torch.inference_mode()`` (Lightning's validation hooks).

Inputs are images ``(N, C, H, W)``, float sequences ``(N, C, L)``, or integer token ids
``(N, L)`` attributed per token through the model's ``nn.Embedding``. A ``forward`` function
stands in for ``model(x)`` when the model takes or returns something else than a tensor.

Work is split into passes that fit ``memory_budget_mb``: the activation memory of one sample is
estimated from one guarded forward pass of one sample (cached per model and input shape), and the
methods that evaluate the model on many perturbed copies of the input (integrated gradients,
SmoothGrad, GradientShap, occlusion, DeepLift) get a matching internal batch size.

Layout: ``methods`` holds one :class:`MethodSpec` per method (runner, accepted arguments and
properties) in :data:`METHOD_SPECS`; ``core`` the entry points; ``_model`` the cached model
facts and profile; ``_head`` the function Captum differentiates and the safety nets.

Example:
    >>> result = attribute(model, images, "integrated_gradients", target="label", labels=y)
    >>> result.attributions.shape == images.shape
    True
"""

from cnnviz.analysis.attribution._head import Head as _Head  # noqa: F401 - tests spy on it
from cnnviz.analysis.attribution.core import (
    attribute,
    attribute_many,
    available_methods,
    estimate_internal_batch_size,
    gradcam_layers,
)
from cnnviz.analysis.attribution.methods import METHOD_SPECS, METHODS, MethodSpec
from cnnviz.analysis.attribution.results import (
    AttributionResult,
    AttributionUnavailable,
    InputKind,
)

__all__ = [
    "METHODS",
    "METHOD_SPECS",
    "AttributionResult",
    "AttributionUnavailable",
    "InputKind",
    "MethodSpec",
    "attribute",
    "attribute_many",
    "available_methods",
    "estimate_internal_batch_size",
    "gradcam_layers",
]
