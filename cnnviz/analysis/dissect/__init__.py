"""Network Dissection: name the concept each unit of a layer detects (Bau et al., CVPR 2017).

For every channel ``k`` of a conv or pooling layer, the unit's maps are read where it fires
(after the normalisation and activation that follow a conv, :func:`find_readouts`), upsampled
bilinearly to the resolution of the concept masks, and thresholded at ``T_k``, the value that
the top ``quantile`` of all its upsampled activations over the data set reach. The unit's
region ``M_k = {a_k >= T_k}`` is compared with every concept ``c`` (per-pixel masks ``L_c``,
:mod:`cnnviz.analysis.concepts`) by the data-set-wide intersection over union
``IoU(k, c) = Σ|M_k ∩ L_c| / Σ|M_k ∪ L_c|``, and the unit is labelled with the best concept when
its IoU reaches ``iou_threshold`` (0.04 in the paper).

How it is computed (:class:`DissectionCounts`): in **one pass** over the data, on the
activations' device, each unit keeps a histogram of its upsampled activations over ``bins``
bins and, per bin, how many of those pixels lie in each concept. The bins are a power-of-two
grid fitted to the unit's range (width ``2^e``, ``e`` the smallest exponent whose grid covers
the range with ``bins`` bins; the grid depends on the range alone), and when the range grows,
bins merge exactly. Only the top of each distribution is kept: pixels below a *floor* — the
bin of the ``⌈q·n_max⌉``-th largest value seen so far, ``n_max`` the pixels the data is
expected to hold (its length × mask pixels) — can never reach the threshold, so they are
neither histogrammed nor counted against concepts. Three things keep the work near the top:
a map whose maximum is below its unit's floor is never upsampled; of the other maps, only
output rows whose vertically interpolated values reach the floor are interpolated
horizontally (an output pixel mixes two values of its row); and the first batch bounds the
floor from below before upsampling (every upsampled pixel is at least the minimum of its
interpolation cell). Concepts arrive coded by groups of mutually exclusive concepts
(:class:`~cnnviz.analysis.concepts.ConceptBatch`), so counting a pixel against all concepts
is one histogram update per group. If a unit's floor ends above its threshold's bin (more
data than expected, or the range grew more than 4x after the floor was set), or the data has
no length, a second pass on the final grid recounts the affected units exactly
(:meth:`DissectionCounts.refinement`).

Accuracy: the threshold used, ``T̂_k``, is the lower edge of the bin holding the
``⌈q·n⌉``-th largest value (``n`` = images × mask pixels), so ``T̂_k <= T_k < T̂_k + w_k`` with
``w_k < 2·range_k / (bins - 2)`` — under 0.2 % of the unit's range with the default 1024 bins
(or the float32 resolution of the unit's values, if that is coarser) — and the region holds
at least the top ``q`` of the pixels plus the others of that one bin. Its share is reported
exactly (:attr:`Dissection.top_fraction`), and every count and IoU is exact for ``T̂_k``. The
lowest bin (it holds the unit's minimum) never belongs to a region: a unit whose
``⌈q·n⌉``-th value lies in it (one at its minimum — zero for a ReLU — on more than ``1 - q``
of the pixels) is thresholded at the next bin edge, so it never "fires" where it is at its
minimum, and a unit that never leaves its minimum has an empty region. Counts are integers,
and merging partial results (two halves of the data, DDP ranks:
:meth:`DissectionCounts.sync`) gives exactly the single-pass result.

:func:`dissect` and :func:`dissect_layers` run all of it under
:func:`~cnnviz.analysis.guard.observe` (eval mode, RNG forked, no ``.grad`` touched, every hook
removed, modes restored, also on error); :func:`randomised_control` dissects a re-initialised
copy of the model, the paper's baseline.

Modules: ``core`` (:func:`dissect`, :func:`dissect_layers`), ``counts``
(:class:`DissectionCounts`) and ``_streaming`` (its per-batch update), ``grid`` (upsampling
and the bin grid), ``results`` (:class:`Dissection`, :class:`UnitLabel`), ``data`` (data and
concepts, :func:`cache_concepts`), ``control`` (the randomised control).

Example:
    >>> ds = ShapesDataset(500, image_size=32, split="val")
    >>> result = dissect(model, "features.c3", ds)  # concepts: ShapesConcepts.for_dataset(ds)
    >>> result.units()[0]
    UnitLabel(channel=0, concept='ring', category='object', iou=0.21, ...)
    >>> result.detector_counts()
    {'object': 3, 'part': 1, 'scene': 0, 'colour': 2}
"""

from cnnviz.analysis.concepts import ConceptBatch
from cnnviz.analysis.dissect._streaming import Mode as Mode
from cnnviz.analysis.dissect.control import randomised_control, randomised_copy
from cnnviz.analysis.dissect.core import dissect, dissect_layers
from cnnviz.analysis.dissect.counts import DissectionCounts
from cnnviz.analysis.dissect.data import CachedConcepts, cache_concepts
from cnnviz.analysis.dissect.data import _default_source as _default_source  # callbacks use it
from cnnviz.analysis.dissect.grid import _grid as _grid  # tests check the grid
from cnnviz.analysis.dissect.grid import _rebin as _rebin  # tests check the grid
from cnnviz.analysis.dissect.grid import upsample
from cnnviz.analysis.dissect.results import Dissection, UnitLabel

__all__ = [
    "CachedConcepts",
    "ConceptBatch",
    "Dissection",
    "DissectionCounts",
    "UnitLabel",
    "cache_concepts",
    "dissect",
    "dissect_layers",
    "randomised_control",
    "randomised_copy",
    "upsample",
]
