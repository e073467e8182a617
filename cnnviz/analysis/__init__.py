"""The science of cnnviz, usable without Lightning: layers, capture, receptive fields, attributions.

This package imports torch, torchvision, captum and numpy only — never lightning or plotly.
"""

from cnnviz.analysis.capture import CapturedLayer, LayerCapture, capture_activations, channel_stats
from cnnviz.analysis.guard import HookSet, hook_count, observe
from cnnviz.analysis.layers import LayerInfo, activation_after, list_layers, select_layers

__all__ = [
    "CapturedLayer",
    "HookSet",
    "LayerCapture",
    "LayerInfo",
    "activation_after",
    "capture_activations",
    "channel_stats",
    "hook_count",
    "list_layers",
    "observe",
    "select_layers",
]
