"""The science of cnnviz, usable without Lightning: layers, capture, receptive fields, attributions.

This package imports torch, torchvision, captum and numpy only — never lightning or plotly.
"""

from cnnviz.analysis.capture import CapturedLayer, LayerCapture, capture_activations, channel_stats
from cnnviz.analysis.guard import HookSet, hook_count, observe
from cnnviz.analysis.layers import LayerInfo, activation_after, list_layers, select_layers
from cnnviz.analysis.readout import Readout, ReadoutHooks, find_readouts, raw_readout

__all__ = [
    "CapturedLayer",
    "HookSet",
    "LayerCapture",
    "LayerInfo",
    "Readout",
    "ReadoutHooks",
    "activation_after",
    "capture_activations",
    "channel_stats",
    "find_readouts",
    "hook_count",
    "list_layers",
    "observe",
    "raw_readout",
    "select_layers",
]
