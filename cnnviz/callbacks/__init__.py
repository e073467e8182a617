"""The cnnviz Lightning callbacks (public surface).

Example:
    >>> from cnnviz.callbacks import ActivationMaps, FilterWeights
    >>> trainer = Trainer(callbacks=[FilterWeights(), ActivationMaps()])
"""

from cnnviz.callbacks.activation_maps import ActivationMaps
from cnnviz.callbacks.base import VizCallback
from cnnviz.callbacks.filter_weights import FilterWeights

__all__ = ["ActivationMaps", "FilterWeights", "VizCallback"]
