"""Per-pixel concept masks for Network Dissection: what a unit's top region is compared with.

A *concept* is a named set of pixels in every image (Bau et al. 2017 use the Broden data set:
objects, parts, scenes, materials, textures, colours). :func:`~cnnviz.analysis.dissect.dissect`
reads them through a :class:`ConceptSource`: a callable that takes one batch as the data yields
it and returns ``(model_input, masks)``, where ``masks`` is a ``bool`` tensor ``[N, K, H, W]`` in
the order of its :attr:`~ConceptSource.concepts`, a mapping ``{name: [N, H, W]}``, or a
:class:`ConceptBatch` — the concepts coded by groups of mutually exclusive concepts, one byte
per pixel and group, which is what counting uses (masks are coded on arrival). Three adapters
cover the common cases:

- :class:`ShapesConcepts` — the built-in Shapes data (batches ``(images, labels, masks)``): one
  concept per shape class (the object's pixels in images of that class), the object's edge (a
  thin band across the mask boundary) and interior (the mask eroded), the background, and hue
  bins (red, yellow, green, cyan, blue, magenta) of each pixel's colour;
- :class:`LabelMapConcepts` — data with per-pixel label maps (segmentation data sets): one
  concept per label value;
- :class:`MaskConcepts` — anything else: a function returning named masks.

Every concept has a *category* (:data:`CATEGORIES`: ``"object"``, ``"part"``, ``"colour"``,
``"scene"``, or any other string) for the report's "unique detectors per category".

Modules: ``core`` (:class:`Concept`, :class:`ConceptSource`, :class:`ConceptBatch`,
:func:`concept_batch`), ``shapes`` (:class:`ShapesConcepts`, :func:`with_masks`), ``user``
(:class:`LabelMapConcepts`, :class:`MaskConcepts`).

Example:
    >>> source = ShapesConcepts.for_dataset(ShapesDataset(64, image_size=32))
    >>> [c.name for c in source.concepts][:3]
    ['circle', 'square', 'triangle']
    >>> images, coded = source((images, labels, fg_masks))  # a ConceptBatch
    >>> coded.masks().shape  # bool [N, K, H, W]
    torch.Size([64, 18, 32, 32])
"""

from cnnviz.analysis.concepts.core import (
    CATEGORIES,
    Concept,
    ConceptBatch,
    ConceptSource,
    concept_batch,
)
from cnnviz.analysis.concepts.shapes import DEFAULT_HUES, ShapesConcepts, with_masks
from cnnviz.analysis.concepts.user import LabelMapConcepts, MaskConcepts

__all__ = [
    "CATEGORIES",
    "DEFAULT_HUES",
    "Concept",
    "ConceptBatch",
    "ConceptSource",
    "LabelMapConcepts",
    "MaskConcepts",
    "ShapesConcepts",
    "concept_batch",
    "with_masks",
]
