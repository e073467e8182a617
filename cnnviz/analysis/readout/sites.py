"""What is read for a layer: :class:`ReadSite`, :class:`Readout` and :func:`raw_readout`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from cnnviz.analysis.layers import CONV_TYPES, POOL_TYPES

Stage = Literal["activation", "norm", "raw"]
LayerRole = Literal["conv", "pool", "other"]


def _role(module: nn.Module) -> LayerRole:
    if isinstance(module, CONV_TYPES):
        return "conv"
    if isinstance(module, POOL_TYPES):
        return "pool"
    return "other"


def _short(step: str) -> str:
    """Short step name: ``layer1.0.bn2`` → ``bn2``, ``relu() in x`` → ``relu()``."""
    if " in " in step:
        return step.split(" in ", 1)[0]
    if step.startswith(("+", "cat")):
        return step
    parts = step.split(".")
    start = len(parts) - 1
    while start > 0 and parts[start].isdigit():
        start -= 1
    return ".".join(parts[start:])


@dataclass(frozen=True)
class ReadSite:
    """The tensor to read for a layer, as something hooks can find in every forward pass.

    Attributes:
        kind: ``"module"``: the output of module :attr:`name`; ``"function"``: the output of the
            torch function named :attr:`name` (``"relu"``, ``"batch_norm"``...).
        name: Qualified module name (``""`` is the model itself), or the function's name.
        index: Which call of the module, or which occurrence of the function among all calls
            of functions with that name, in one forward pass (0 = the first).
        calls: How many calls/occurrences one forward pass made when the site was found. Calls
            are counted from the model's call and wrap around every ``calls``, so call
            ``index`` of each forward is read; with ``calls <= 1`` every call is read (a module
            called once per forward, or unknown).
        scope: For functions, the innermost module that called it (``""``: the model's own
            ``forward``); empty for modules.
    """

    kind: Literal["module", "function"]
    name: str
    index: int = 0
    calls: int = 1
    scope: str = ""

    def label(self) -> str:
        """``layer1.0.relu``, ``layer1.0.relu (call 2)`` or ``relu() in features``."""
        if self.kind == "module":
            base = self.name or "(model output)"
            return base if self.index == 0 else f"{base} (call {self.index + 1})"
        where = f" in {self.scope}" if self.scope else ""
        return f"{self.name.rstrip('_')}(){where}"


@dataclass(frozen=True)
class Readout:
    """Which tensor is read for one layer, and what it is.

    Attributes:
        layer: Qualified name of the layer (as in ``model.named_modules()``).
        stage: ``"activation"``: read after the activation that follows the conv (what the unit
            fires); ``"norm"``: no activation follows, read after the last normalisation;
            ``"raw"``: the layer's own output (pooling layers, convs with nothing after them, or
            a fallback, see :attr:`reason`).
        path: Human-readable steps from the conv to the tensor read, e.g.
            ``("layer1.0.bn2", "+ residual", "layer1.0.relu")``; empty for ``"raw"``.
        site: Where the tensor is found in a forward pass (:class:`ReadSite`).
        channel_offset: First channel of the layer's maps within the tensor read (non-zero when
            the conv's output was concatenated with others, as in DenseNet).
        channel_count: Number of the layer's channels (``None``: every channel of the tensor).
        permute: Dimension order that brings the tensor read back to ``(N, C, ...)`` when the
            path permuted it (ConvNeXt's channels-last LayerNorm); ``None`` if not permuted.
        kind: ``"conv"``, ``"pool"`` or ``"other"`` (only convs are followed).
        reason: Why the layer is read before an activation (empty when read after one).
    """

    layer: str
    stage: Stage
    path: tuple[str, ...]
    site: ReadSite
    channel_offset: int = 0
    channel_count: int | None = None
    permute: tuple[int, ...] | None = None
    kind: LayerRole = "conv"
    reason: str = ""

    @property
    def post_activation(self) -> bool:
        """``True`` when the maps are read after an activation."""
        return self.stage == "activation"

    @property
    def pre_activation(self) -> bool:
        """``True`` for a conv layer read before any activation (label its maps as such)."""
        return self.kind == "conv" and self.stage != "activation"

    @property
    def source(self) -> str:
        """What is read, in a few words: ``layer1.0.relu (call 2)``, ``relu() in features``.

        Concatenations add the channel range (``features.denseblock1.denselayer2.relu1
        [64:96]``).
        """
        label = self.site.label()
        if self.channel_offset or (
            self.channel_count is not None and any(s.startswith("cat") for s in self.path)
        ):
            stop = self.channel_offset + (self.channel_count or 0)
            label += f" [{self.channel_offset}:{stop}]"
        return label

    def describe(self) -> str:
        """One line for reports, e.g. ``read after bn2 → + residual → relu``."""
        if self.kind != "conv":
            return f"read as it is ({self.kind} layer)" + (
                f"; {self.reason}" if self.reason else ""
            )
        if self.stage == "raw":
            return "raw conv output (pre-activation)" + (f": {self.reason}" if self.reason else "")
        text = "read after " + " → ".join(_short(s) for s in self.path)
        if self.stage == "norm":
            text += " (pre-activation" + (f": {self.reason})" if self.reason else ")")
        return text

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary for records: stage, path, source, description, channels."""
        return {
            "layer": self.layer,
            "kind": self.kind,
            "stage": self.stage,
            "post_activation": self.post_activation,
            "path": list(self.path),
            "source": self.source,
            "describe": self.describe(),
            "channel_offset": self.channel_offset,
            "channel_count": self.channel_count,
            "reason": self.reason,
        }


def raw_readout(model: nn.Module, layer: str, *, reason: str = "") -> Readout:
    """A :class:`Readout` that reads ``layer``'s own output (every call of it).

    Args:
        model: The model that owns ``layer``.
        layer: Qualified module name.
        reason: Why the layer is read raw (shown by :meth:`Readout.describe`).

    Returns:
        A ``"raw"`` readout of the module's output.

    Raises:
        ValueError: If ``model`` has no module ``layer``.
    """
    module = _modules_or_raise(model, [layer])[layer]
    role = _role(module)
    count = int(module.out_channels) if role == "conv" else None
    return Readout(
        layer=layer,
        stage="raw",
        path=(),
        site=ReadSite("module", layer),
        channel_count=count,
        kind=role,
        reason=reason,
    )


def _modules_or_raise(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}")
    modules = dict(model.named_modules())
    unknown = [n for n in names if not isinstance(n, str) or n not in modules]
    if unknown:
        from cnnviz.analysis.layers import list_layers

        valid = ", ".join(i.name for i in list_layers(model)) or "(none)"
        raise ValueError(
            f"`layers`: unknown layer(s) {unknown}; conv and pooling layers are: {valid}"
        )
    return {n: modules[n] for n in names}
