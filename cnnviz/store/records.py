"""The record kinds of the run store: one frozen dataclass per kind.

Every record has a :class:`Header` (which run, which writer, which layer and event) and its own
*meta* fields (small JSON values, in the manifest line) and *array* fields (in the record's
``.npz`` file). The writer (:meth:`cnnviz.store.RunStore.put`) validates a record against its
class; the reader (:class:`cnnviz.store.StoreReader`) returns the same classes, with arrays that
load lazily and are validated when read. ``docs/store-format.md`` is generated from this module
(``scripts/store_format_doc.py``).

Example:
    >>> store.put(FiltersRecord(weight=w, norms=n, full_shape=(6, 3, 5, 5)),
    ...           writer="FilterWeights{}", layer="features.0", epoch=0, step=10,
    ...           event="epoch", label="epoch 1")
    >>> [r.label for r in reader.read(FiltersRecord, layer="features.0")]
    ['epoch 1']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from cnnviz.store.schema import JSON, Padding, PerAxis, array

__all__ = [
    "KINDS",
    "ActivationsRecord",
    "AttributionChecksRecord",
    "AttributionsRecord",
    "BudgetRecord",
    "ConceptInfo",
    "DissectionRecord",
    "ErfRecord",
    "ErrorRecord",
    "Event",
    "Faithfulness",
    "FaithfulnessCurves",
    "FeatvisRecord",
    "FiltersRecord",
    "Header",
    "LayerTableRecord",
    "MetricsRecord",
    "PredictionsRecord",
    "ProbeRecord",
    "Randomisation",
    "ReceptiveFieldRecord",
    "ResumeRecord",
    "StoreRecord",
    "TableRow",
    "TopkRecord",
    "meta_fields",
    "record_class",
]

Event = Literal["start", "epoch", "step"]
LayerRule = Literal["required", "none", "optional"]


@dataclass(frozen=True)
class Header:
    """What every record says about itself (the manifest line, without the record's meta).

    Attributes:
        id: Unique id within the store (also the arrays' file name).
        kind: The record kind (``filters``, ``activations``...).
        run: Id of the run that wrote it (``null`` for records written without a run session).
        writer: The writing callback's ``state_key`` (``inspect``, ``cnnviz`` for metrics).
        segment: Which part of the run: 0, then one more after each resume.
        layer: Qualified layer name for per-layer kinds, else ``null``.
        epoch: 0-based trainer epoch at the event.
        step: Trainer global step at the event.
        event: ``start``, ``epoch`` or ``step`` (``null`` for records outside events).
        label: The slider label (``start``, ``epoch 3``, ``step 200``).
        time: Wall-clock time of the write (seconds since the epoch).
        file: The ``.npz`` path relative to the store (``arrays/<kind>/<id>.npz``), or ``null``.
    """

    id: str
    kind: str
    run: str | None = None
    writer: str | None = None
    segment: int = 0
    layer: str | None = None
    epoch: int | None = None
    step: int | None = None
    event: Event | None = None
    label: str | None = None
    time: float = 0.0
    file: str | None = None


class _Lazy:
    """A placeholder for an array field of a record read from a store (loaded when used)."""

    __slots__ = ("loader", "name")

    def __init__(self, loader: Any, name: str) -> None:
        self.loader = loader
        self.name = name

    def get(self) -> Any:
        return self.loader.get(self.name)


@dataclass(frozen=True)
class StoreRecord:
    """Base of the record kinds.

    Attributes:
        header: Set by the store (writer or reader); ``None`` on a record not yet written.
    """

    KIND: ClassVar[str] = ""
    LAYER: ClassVar[LayerRule] = "none"
    WRITTEN_BY: ClassVar[str] = ""
    #: Meta keys older stores (or writers) send that this kind drops.
    IGNORED_META: ClassVar[frozenset[str]] = frozenset()

    header: Header | None = field(default=None, kw_only=True, compare=False, repr=False)

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if type(value) is _Lazy:
            return value.get()
        return value

    # -- the header, for convenience ------------------------------------------------------------
    def _h(self) -> Header:
        h = object.__getattribute__(self, "header")
        return h if h is not None else Header(id="", kind=self.KIND)

    @property
    def id(self) -> str:
        """The record id (``""`` before it is written)."""
        return self._h().id

    @property
    def layer(self) -> str | None:
        """The layer name, if the record is about one layer."""
        return self._h().layer

    @property
    def epoch(self) -> int | None:
        """The 0-based epoch of the event."""
        return self._h().epoch

    @property
    def step(self) -> int | None:
        """The global step of the event."""
        return self._h().step

    @property
    def writer(self) -> str | None:
        """The writing callback's ``state_key``."""
        return self._h().writer

    @property
    def run(self) -> str | None:
        """The id of the run that wrote the record."""
        return self._h().run

    @property
    def label(self) -> str:
        """The slider label (``epoch 3``), derived from the epoch or step when not stored."""
        h = self._h()
        if h.label:
            return h.label
        if h.event == "start":
            return "start"
        if h.event == "step" and h.step is not None:
            return f"step {h.step}"
        if h.epoch is not None:
            return f"epoch {h.epoch + 1}"
        if h.step is not None:
            return f"step {h.step}"
        return h.id or self.KIND

    def array_names(self) -> list[str]:
        """Names of the arrays present (without loading them)."""
        out = []
        for f in dataclasses.fields(self):
            if "array" not in f.metadata:
                continue
            raw = object.__getattribute__(self, f.name)
            if isinstance(raw, _Lazy):
                names = raw.loader.names
                if raw.name == "*":
                    out += [n for n in names if n not in _declared(type(self))]
                elif raw.name in names:
                    out.append(raw.name)
            elif isinstance(raw, Mapping):
                out += list(raw)
            elif raw is not None:
                out.append(f.name)
        return out


def _declared(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if "array" in f.metadata}


def meta_fields(cls: type[StoreRecord]) -> list[dataclasses.Field[Any]]:
    """The meta (JSON) fields of a record class, in declaration order."""
    return [
        f
        for f in dataclasses.fields(cls)
        if "array" not in f.metadata and f.name != "header" and f.init
    ]


# -- kinds ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricsRecord(StoreRecord):
    """The logged metrics at the end of an epoch (``trainer.callback_metrics``).

    Attributes:
        values: Metric name to value (NaN/Inf are stored as ``null`` and read as NaN).
    """

    KIND: ClassVar[str] = "metrics"
    WRITTEN_BY: ClassVar[str] = "every callback (the first one each epoch)"

    values: dict[str, float]


@dataclass(frozen=True)
class FiltersRecord(StoreRecord):
    """A conv layer's filters at one event.

    Attributes:
        weight: The first ``max_channels`` filters × first ``max_in_channels`` inputs.
        norms: L2 norm of every full filter.
        grad: The weight gradient of the logged step, sliced like ``weight``.
        grad_norms: L2 norm of every filter's gradient.
        full_shape: The layer's full weight shape.
        channels: Indices of the filters in ``weight`` (default ``0..K-1``).
        rgb: Draw the filters in colour (the first conv layer on 3-channel input).
        dead: Filters with a norm under the tolerance or a zero gradient.
        unchanged: Filters whose relative change since the previous event is under the tolerance.
        nonfinite: NaN/Inf values among ``weight`` and ``norms``.
        layer_type: Module class name.
        bias: Whether the layer has a bias (``null``: unknown).
    """

    KIND: ClassVar[str] = "filters"
    LAYER: ClassVar[LayerRule] = "required"
    WRITTEN_BY: ClassVar[str] = "FilterWeights, inspect"

    weight: np.ndarray = field(**array("float", (3, 4), doc="[K, C, kh, kw] or [K, C, k]"))
    norms: np.ndarray = field(**array("float", 1, doc="[K_all]"))
    grad: np.ndarray | None = field(**array("float", (3, 4), required=False, doc="like `weight`"))
    grad_norms: np.ndarray | None = field(**array("float", 1, required=False, doc="[K_all]"))
    full_shape: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    rgb: bool = False
    dead: tuple[int, ...] = ()
    unchanged: tuple[int, ...] = ()
    nonfinite: int = 0
    layer_type: str | None = None
    bias: bool | None = None


@dataclass(frozen=True)
class ProbeRecord(StoreRecord):
    """The fixed probe inputs every callback looks at.

    Attributes:
        x: The model input.
        y: Labels.
        display: The inputs as images for people, in [0, 1].
        masks: Foreground masks (Shapes data).
        class_names: Names of the classes, if the data says.
        shape: Shape of ``x``.
        vocabulary: Token id to word, for token inputs whose data has a vocabulary.
    """

    KIND: ClassVar[str] = "probe"
    WRITTEN_BY: ClassVar[str] = "ActivationMaps, Attributions, ReceptiveFields, inspect"

    x: np.ndarray = field(**array("number", (2, 3, 4, 5), doc="[N, ...] model input"))
    y: np.ndarray | None = field(**array("number", 1, required=False, doc="[N]"))
    display: np.ndarray | None = field(
        **array("float", 4, required=False, doc="[N, H, W, C] in [0, 1]")
    )
    masks: np.ndarray | None = field(**array("any", 3, required=False, doc="[N, H, W]"))
    class_names: tuple[str, ...] | None = None
    shape: tuple[int, ...] = ()
    vocabulary: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PredictionsRecord(StoreRecord):
    """The model's softmax outputs on the probe inputs at one event.

    Attributes:
        probs: Class probabilities.
        class_names: Names of the classes.
    """

    KIND: ClassVar[str] = "predictions"
    WRITTEN_BY: ClassVar[str] = "ActivationMaps, inspect"

    probs: np.ndarray = field(**array("float", 2, doc="[N, num_classes]"))
    class_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ActivationsRecord(StoreRecord):
    """What a conv or pooling layer fires on the probe inputs at one event.

    Attributes:
        maps: The kept channels' maps, area-downsampled to ``max_size``.
        channels: Indices of the kept channels.
        mean: Per-channel mean over all channels.
        max: Per-channel maximum.
        min: Per-channel minimum.
        zero_fraction: Per-channel fraction of exact zeros.
        shape: The full output shape ``[N, C, H, W]`` (or ``[N, C, L]``).
        read_from: The module read (the activation after a conv: what the unit fires).
        nonfinite: NaN/Inf values in the full output.
        layer_type: Module class name.
        stage: Where a conv was read: ``activation`` (after the norm and activation that
            follow it), ``norm`` (after its norm: no activation follows) or ``raw`` (its own
            output); ``null`` for pooling layers.
        read_path: The steps from the conv to the tensor read (``bn1``, ``+ residual``,
            ``relu``), in words.
    """

    KIND: ClassVar[str] = "activations"
    LAYER: ClassVar[LayerRule] = "required"
    WRITTEN_BY: ClassVar[str] = "ActivationMaps, inspect"

    maps: np.ndarray = field(**array("float", (3, 4), doc="[N, K, h, w] or [N, K, L]"))
    channels: np.ndarray = field(**array("int", 1, doc="[K]"))
    mean: np.ndarray | None = field(**array("float", 1, required=False, doc="[C_all]"))
    max: np.ndarray | None = field(**array("float", 1, required=False, doc="[C_all]"))
    min: np.ndarray | None = field(**array("float", 1, required=False, doc="[C_all]"))
    zero_fraction: np.ndarray | None = field(**array("float", 1, required=False, doc="[C_all]"))
    shape: tuple[int, ...] = ()
    read_from: str | None = None
    nonfinite: int = 0
    layer_type: str | None = None
    stage: str | None = None
    read_path: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableRow:
    """One row of the lecture's layer table.

    Attributes:
        name: Qualified module name.
        type: Module class name.
        kind: ``conv``, ``pool`` or ``linear``.
        input_shape: Input shape without batch.
        output_shape: Output shape without batch.
        kernel: Filter size per axis.
        stride: Stride per axis.
        padding: Padding per axis (``[before, after]`` where they differ).
        dilation: Dilation per axis.
        output_arithmetic: The output size written out, ``(227 − 11 + 2·0)/4 + 1 = 55``.
        weights_arithmetic: The weight count written out, ``11·11·3·96 + 96 = 34,944``.
        params: Parameters of the layer itself.
        fits: ``false`` when some axis needed a floor (the stride does not fit).
        rf_size: Receptive field size per axis.
        rf_jump: Receptive field jump (effective stride) per axis.
        rf_start: Where unit 0's field starts, per axis.
    """

    name: str
    type: str | None = None
    kind: str | None = None
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    kernel: PerAxis | None = None
    stride: PerAxis | None = None
    padding: Padding | None = None
    dilation: PerAxis | None = None
    output_arithmetic: str | None = None
    weights_arithmetic: str | None = None
    params: int | None = None
    fits: bool = True
    rf_size: PerAxis | None = None
    rf_jump: PerAxis | None = None
    rf_start: PerAxis | None = None


@dataclass(frozen=True)
class LayerTableRecord(StoreRecord):
    """The lecture's layer table: shapes, arithmetic and receptive fields of every layer.

    Attributes:
        rows: One row per conv, pooling and linear layer, in forward order.
    """

    KIND: ClassVar[str] = "layer_table"
    WRITTEN_BY: ClassVar[str] = "ReceptiveFields, inspect"

    rows: tuple[TableRow, ...]


@dataclass(frozen=True)
class ReceptiveFieldRecord(StoreRecord):
    """A layer's theoretical receptive field and the input region one unit sees.

    Attributes:
        region_image: A probe image to draw the region on.
        size: Field size per axis (unclipped).
        jump: Distance between neighbouring units' fields per axis.
        start: Where unit 0's field starts per axis.
        padding: Effective padding per axis.
        unit: The unit described (the centre unit unless chosen).
        region: Half-open region the unit reads, clipped (top, bottom, left, right).
        region_unclipped: The same, unclipped.
        misaligned: Paths with different geometry merge at or before this layer.
        misaligned_at: Where they merge.
        exact: ``false`` when the unclipped geometry is a conservative superset.
        layer_type: Module class name.
        output_shape: The layer's output shape without batch.
        global_context: A global-context path (a squeeze-and-excitation gate, a global pool
            broadcast back, attention) joins the layer's input: every unit also sees the
            whole input, and the local fields below are the informative ones.
        global_context_at: Where global-context paths join.
        local_size: The local field's size per axis (global-context paths cut).
        local_jump: The local field's jump per axis.
        local_region: The unit's local region, clipped.
        local_region_unclipped: The same, unclipped.
    """

    KIND: ClassVar[str] = "receptive_field"
    LAYER: ClassVar[LayerRule] = "required"
    WRITTEN_BY: ClassVar[str] = "ReceptiveFields (once), inspect"

    region_image: np.ndarray | None = field(
        **array("float", (2, 3), required=False, doc="[H, W, C] or [H, W] in [0, 1]")
    )
    size: PerAxis = ()
    jump: PerAxis = ()
    start: PerAxis | None = None
    padding: PerAxis | None = None
    unit: tuple[int, ...] | None = None
    region: tuple[int, ...] | None = None
    region_unclipped: tuple[int, ...] | None = None
    misaligned: bool = False
    misaligned_at: tuple[str, ...] = ()
    exact: bool = True
    layer_type: str | None = None
    output_shape: tuple[int, ...] | None = None
    global_context: bool = False
    global_context_at: tuple[str, ...] = ()
    local_size: PerAxis | None = None
    local_jump: PerAxis | None = None
    local_region: tuple[int, ...] | None = None
    local_region_unclipped: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ErfRecord(StoreRecord):
    """The effective receptive field of a layer's centre unit at one event (Luo et al. 2016).

    Attributes:
        map: Mean absolute input gradient of the unit over the probe images.
        radius: Radius of the disc around the centroid holding ``mass_fraction`` of the mass
            (a shape descriptor for drawing).
        sigma: Per-axis standard deviation of the map.
        ratio: The smallest share of the unit's (clipped, local) theoretical field that holds
            ``mass_fraction`` of the gradient mass inside it — at most 1 by construction (0.9
            for a flat map); NaN when the map has no mass or holds NaN/Inf.
        theoretical: The unit's clipped theoretical region (top, bottom, left, right).
        region: The region drawn (the theoretical one).
        theoretical_size: Theoretical field size per axis.
        effective_size: The side of a square of the effective area (2-D), its length (1-D).
        unit: The unit measured.
        centroid: Mass-weighted centre of the map (row, column).
        mass_fraction: The mass share the effective area holds (0.9).
        num_images: Probe images averaged.
        note: Why the theoretical field is missing, or why the summary is NaN.
        effective_area: Pixels of the effective area.
        inside_fraction: Share of all gradient mass inside the theoretical field.
        local_fraction: Share inside the local field (layers that see global context).
    """

    KIND: ClassVar[str] = "erf"
    LAYER: ClassVar[LayerRule] = "required"
    WRITTEN_BY: ClassVar[str] = "ReceptiveFields (each event)"

    map: np.ndarray = field(**array("float", 2, doc="[H, W] ([1, L] for sequences)"))
    radius: float | None = None
    sigma: tuple[float, ...] = ()
    ratio: float | None = None
    theoretical: tuple[int, ...] | None = None
    region: tuple[int, ...] | None = None
    theoretical_size: tuple[int, ...] | None = None
    effective_size: float | None = None
    unit: tuple[int, ...] | None = None
    centroid: tuple[float, ...] | None = None
    mass_fraction: float | None = None
    num_images: int | None = None
    note: str | None = None
    effective_area: float | None = None
    inside_fraction: float | None = None
    local_fraction: float | None = None


@dataclass(frozen=True)
class TopkRecord(StoreRecord):
    """The dataset patches that excite each channel most.

    Attributes:
        values: Activation of each patch (NaN where missing).
        samples: Sample index of each patch (-1 where missing).
        positions: Position of each patch's unit in the map.
        patches: The input patches (each unit's receptive field).
        tokens: Token ids of each patch (token models).
        channels: Channel indices.
        k: Patches per channel.
        num_channels: Channels of the layer.
        read_from: The module read.
        layer_type: Module class name.
        rf_size: Receptive field size per axis.
        patch_scale: Downsampling factor of the stored patches.
        padding: Share of each patch's (local) field that lies in the zero padding (NaN where
            missing).
        interior_only: Only units whose field lies inside the image were ranked.
        stage: Where a conv was read (see ``activations``).
    """

    KIND: ClassVar[str] = "topk"
    LAYER: ClassVar[LayerRule] = "required"
    WRITTEN_BY: ClassVar[str] = "TopActivations"
    IGNORED_META: ClassVar[frozenset[str]] = frozenset({"tokens"})  # the array says it

    values: np.ndarray = field(**array("float", 2, doc="[C, k]"))
    samples: np.ndarray = field(**array("int", 2, doc="[C, k]"))
    positions: np.ndarray = field(**array("int", 3, doc="[C, k, 2] ([C, k, 1] for sequences)"))
    patches: np.ndarray | None = field(
        **array("float", (4, 5), required=False, doc="[C, k, h, w, 3] or [C, k, h, w] in [0, 1]")
    )
    tokens: np.ndarray | None = field(**array("int", 3, required=False, doc="[C, k, l]"))
    padding: np.ndarray | None = field(**array("float", 2, required=False, doc="[C, k]"))
    channels: tuple[int, ...] = ()
    k: int | None = None
    num_channels: int | None = None
    read_from: str | None = None
    layer_type: str | None = None
    rf_size: tuple[int, ...] | None = None
    patch_scale: float | None = None
    interior_only: bool = False
    stage: str | None = None


@dataclass(frozen=True)
class AttributionsRecord(StoreRecord):
    """Input attributions of the probe images, one map per method.

    Attributes:
        maps: Method name to its signed map, summed over input channels.
        methods: The methods, in order.
        targets: The class each image's maps explain.
        notes: Method to a remark on its output.
        unavailable: Method to why it could not run on this model.
        layers: Method to the layer it used (Grad-CAM).
        input_kind: ``image``, ``sequence`` or ``tokens`` (maps per token).
    """

    KIND: ClassVar[str] = "attributions"
    WRITTEN_BY: ClassVar[str] = "Attributions, inspect"

    maps: Mapping[str, np.ndarray] = field(
        default_factory=dict,
        compare=False,
        repr=False,
        metadata={
            "array": (
                "float",
                (2, 3, 4),
                False,
                "one array per method: [N, H, W] ([N, L] per token for token inputs)",
            )
        },
    )
    methods: tuple[str, ...] = ()
    targets: tuple[int, ...] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)
    input_kind: str | None = None


@dataclass(frozen=True)
class Randomisation:
    """The model randomisation check (Adebayo et al. 2018).

    Attributes:
        method: The attribution method checked.
        layers: Layers randomised, cumulatively from the top.
        spearman: Rank correlation of absolute maps with the trained model's, per step.
        spearman_signed: The same for signed maps.
    """

    method: str
    layers: tuple[str, ...] = ()
    spearman: tuple[float, ...] = ()
    spearman_signed: tuple[float, ...] | None = None


@dataclass(frozen=True)
class FaithfulnessCurves:
    """Deletion and insertion curves of one ordering, averaged over the probe images.

    Attributes:
        deletion: Score of the explained class with the first ``fractions[k]`` of the input
            removed (most attributed first).
        insertion: Score with the first ``fractions[k]`` of the input put into a blank image.
        deletion_auc: Area under the deletion curve (lower: more faithful).
        insertion_auc: Area under the insertion curve (higher: more faithful).
        score: ``(random deletion AUC - deletion AUC) + (insertion AUC - random insertion
            AUC)``: 0 is what a random map scores, higher is more faithful.
    """

    deletion: tuple[float, ...] = ()
    insertion: tuple[float, ...] = ()
    deletion_auc: float | None = None
    insertion_auc: float | None = None
    score: float | None = None


@dataclass(frozen=True)
class Faithfulness:
    """Deletion/insertion faithfulness of each method (Petsiuk et al. 2018) against random maps.

    Attributes:
        fractions: Share of the input removed or inserted at each step.
        methods: Method to its curves.
        random: Random orderings' curves (averaged over draws).
        random_spread: Standard deviation of the random deletion AUC over draws and images
            (how far apart two random maps land).
        ranking: Methods, most faithful first.
        score: What the curves measure (``probability`` of the explained class, or ``logit``).
        deletion_baseline: What removed pixels become.
        insertion_baseline: The blank image pixels are inserted into.
    """

    fractions: tuple[float, ...] = ()
    methods: dict[str, FaithfulnessCurves] = field(default_factory=dict)
    random: FaithfulnessCurves | None = None
    random_spread: float | None = None
    ranking: tuple[str, ...] = ()
    score: str = "probability"
    deletion_baseline: str | None = None
    insertion_baseline: str | None = None


@dataclass(frozen=True)
class AttributionChecksRecord(StoreRecord):
    """Sanity and faithfulness checks of the attributions.

    Attributes:
        randomisation: The randomisation check (at train end).
        mask_share: Method to ``[share inside the mask, mask area share]`` (data with object
            masks only).
        faithfulness: Deletion and insertion curves per method, against random maps.
        masks: Whether the probe data has object masks (the mask check ran).
    """

    KIND: ClassVar[str] = "attribution_checks"
    WRITTEN_BY: ClassVar[str] = "Attributions"

    randomisation: Randomisation | None = None
    mask_share: dict[str, tuple[float, ...]] | None = None
    faithfulness: Faithfulness | None = None
    masks: bool | None = None


@dataclass(frozen=True)
class FeatvisRecord(StoreRecord):
    """Inputs optimised to excite each channel (feature visualisation).

    Attributes:
        images: One optimised image per channel, in [0, 1].
        activations: The activation each image reaches.
        channels: Channel indices.
        objective: What was maximised.
        param: The image parametrisation.
        steps: Optimisation steps.
        seconds: Time taken.
        stage: Where a conv layer's objective was read (see ``activations``).
        read_path: The steps from the conv to the tensor read.
        units: The output positions averaged (top, bottom, left, right), half-open.
        units_reason: Why those units (interior units: their field lies inside the image).
        same_as: The layer whose images these are (this layer's would be the same).
        stopped_at: Steps done when the run was stopped (SIGTERM); ``null`` when complete.
    """

    KIND: ClassVar[str] = "featvis"
    LAYER: ClassVar[LayerRule] = "required"
    WRITTEN_BY: ClassVar[str] = "FeatureVisualization"

    images: np.ndarray = field(**array("float", (3, 4), doc="[K, H, W, C] or [K, H, W] in [0, 1]"))
    activations: np.ndarray | None = field(**array("float", 1, required=False, doc="[K]"))
    channels: tuple[int, ...] = ()
    objective: str | None = None
    param: str | None = None
    steps: int | None = None
    seconds: float | None = None
    stage: str | None = None
    read_path: tuple[str, ...] = ()
    units: tuple[int, ...] | None = None
    units_reason: str | None = None
    same_as: str | None = None
    stopped_at: int | None = None


@dataclass(frozen=True)
class ConceptInfo:
    """A concept of a dissection.

    Attributes:
        name: The concept (``ring``, ``edge``, ``red``...).
        category: ``object``, ``part``, ``colour`` or ``scene``.
    """

    name: str
    category: str = "object"


@dataclass(frozen=True)
class DissectionRecord(StoreRecord):
    """What each unit of a layer detects (Network Dissection, Bau et al. 2017).

    Each unit's upsampled map is thresholded at its top ``quantile`` over the dissection set;
    the unit is labelled with the concept whose masks overlap that region best (IoU).

    Attributes:
        threshold: Each unit's activation threshold.
        top_fraction: The share of pixels at or above it.
        iou: IoU of each unit with each concept.
        intersection: Pixels of each unit's region inside each concept.
        region: Pixels of each unit's region.
        concept_area: Pixels of each concept.
        best: Each unit's best concept (index into ``concepts``).
        best_iou: Its IoU.
        runner_up: The second best concept.
        runner_up_iou: Its IoU.
        labelled: Whether the best IoU reaches ``iou_threshold``.
        concepts: The concepts (name, category).
        quantile: The top quantile thresholded (0.005).
        iou_threshold: The IoU a unit needs to count as a detector (0.04).
        pixels: Pixels counted per unit.
        images: Images of the dissection set.
        mask_size: Size of the concept masks.
        map_size: Size of the unit maps before upsampling.
        bins: Histogram bins of the streaming quantile.
        passes: Passes over the data.
        stage: Where a conv was read (see ``activations``).
        read_path: The steps from the conv to the tensor read.
        control: ``""`` for the model itself; ``reinit``/``permute`` for the randomised control.
        labelled_units: Units whose best IoU reaches the threshold.
        detectors: Per category, the concepts with at least one detector.
        detector_counts: Per category, the number of unique detectors.
    """

    KIND: ClassVar[str] = "dissection"
    LAYER: ClassVar[LayerRule] = "required"
    WRITTEN_BY: ClassVar[str] = "ConceptDissection"

    threshold: np.ndarray = field(**array("float", 1, doc="[C]"))
    top_fraction: np.ndarray = field(**array("float", 1, doc="[C]"))
    iou: np.ndarray = field(**array("float", 2, doc="[C, K]"))
    intersection: np.ndarray = field(**array("int", 2, doc="[C, K]"))
    region: np.ndarray = field(**array("int", 1, doc="[C]"))
    concept_area: np.ndarray = field(**array("int", 1, doc="[K]"))
    best: np.ndarray = field(**array("int", 1, doc="[C]"))
    best_iou: np.ndarray = field(**array("float", 1, doc="[C]"))
    runner_up: np.ndarray = field(**array("int", 1, doc="[C]"))
    runner_up_iou: np.ndarray = field(**array("float", 1, doc="[C]"))
    labelled: np.ndarray = field(**array("any", 1, doc="[C] bool"))
    concepts: tuple[ConceptInfo, ...] = ()
    quantile: float = 0.005
    iou_threshold: float = 0.04
    pixels: int | None = None
    images: int | None = None
    mask_size: tuple[int, ...] = ()
    map_size: tuple[int, ...] = ()
    bins: int | None = None
    passes: int | None = None
    stage: str | None = None
    read_path: tuple[str, ...] = ()
    control: str = ""
    labelled_units: int = 0
    detectors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    detector_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorRecord(StoreRecord):
    """A callback's failure at an event (training went on).

    Attributes:
        callback: The callback's class name.
        at: The event label (``epoch 3``).
        exception: The exception type.
        message: The exception message.
        traceback: The formatted traceback.
    """

    KIND: ClassVar[str] = "error"
    LAYER: ClassVar[LayerRule] = "optional"
    WRITTEN_BY: ClassVar[str] = "any callback"

    callback: str
    exception: str
    message: str
    at: str | None = None
    traceback: str = ""


@dataclass(frozen=True)
class BudgetRecord(StoreRecord):
    """What a callback cut to stay within its time budget.

    Attributes:
        callback: The callback's class name.
        decisions: What was cut, in words (``"activations every 2 epochs"``).
        settings: The settings that record everything.
    """

    KIND: ClassVar[str] = "budget"
    WRITTEN_BY: ClassVar[str] = "any callback"

    callback: str
    decisions: tuple[str, ...]
    settings: dict[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class ResumeRecord(StoreRecord):
    """A fit resumed from a checkpoint: records of earlier segments after this step are void.

    Attributes:
        previous_run: The run this one continues (when its id differs).
        checkpoint: The checkpoint resumed from.
    """

    KIND: ClassVar[str] = "resume"
    WRITTEN_BY: ClassVar[str] = "the run session (RunStore.begin_segment)"

    previous_run: str | None = None
    checkpoint: str | None = None


#: Record class of each kind, in the order of the format document.
KINDS: dict[str, type[StoreRecord]] = {
    cls.KIND: cls
    for cls in (
        MetricsRecord,
        FiltersRecord,
        ProbeRecord,
        PredictionsRecord,
        ActivationsRecord,
        LayerTableRecord,
        ReceptiveFieldRecord,
        ErfRecord,
        TopkRecord,
        AttributionsRecord,
        AttributionChecksRecord,
        FeatvisRecord,
        DissectionRecord,
        ErrorRecord,
        BudgetRecord,
        ResumeRecord,
    )
}


def record_class(kind: str | type[StoreRecord]) -> type[StoreRecord]:
    """The record class of ``kind`` (a name or a class).

    Raises:
        ValueError: For an unknown kind (the message lists the kinds).
    """
    if isinstance(kind, type) and issubclass(kind, StoreRecord) and kind.KIND in KINDS:
        return kind
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"`kind` must be a non-empty string; got {kind!r}")
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown `kind` {kind!r}; kinds are: {', '.join(KINDS)}") from None
