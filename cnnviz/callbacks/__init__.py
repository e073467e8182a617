"""The cnnviz Lightning callbacks (public surface).

Each callback decides *when* to look; the analysis lives in :mod:`cnnviz.analysis`, results go to
the run store (``<trainer.log_dir>/cnnviz``) and to the trainer's loggers.

Example:
    >>> from cnnviz.callbacks import ActivationMaps, FilterWeights, Report
    >>> trainer = Trainer(callbacks=[FilterWeights(), ActivationMaps(), Report()])
"""

from cnnviz.callbacks.activation_maps import ActivationMaps
from cnnviz.callbacks.attributions import Attributions
from cnnviz.callbacks.base import VizCallback
from cnnviz.callbacks.concept_dissection import ConceptDissection
from cnnviz.callbacks.feature_visualization import FeatureVisualization
from cnnviz.callbacks.filter_weights import FilterWeights
from cnnviz.callbacks.receptive_fields import ReceptiveFields
from cnnviz.callbacks.report import Report
from cnnviz.callbacks.top_activations import TopActivations

__all__ = [
    "ActivationMaps",
    "Attributions",
    "ConceptDissection",
    "FeatureVisualization",
    "FilterWeights",
    "ReceptiveFields",
    "Report",
    "TopActivations",
    "VizCallback",
]
