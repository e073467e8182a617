"""The two public types every attribution call returns or raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = ["AttributionResult", "AttributionUnavailable", "InputKind"]

#: How the inputs were read: ``"image"`` ``(N, C, H, W)`` floats, ``"sequence"`` ``(N, C, L)``
#: floats, or ``"tokens"`` ``(N, L)`` integer token ids (attributed through an embedding layer).
InputKind = Literal["image", "sequence", "tokens"]


class AttributionUnavailable(RuntimeError):
    """A method cannot run on this model or on these inputs.

    For example Grad-CAM on a model without a spatial layer, DeepLift on a model with max
    pooling that calls one activation module twice, or guided Grad-CAM on token ids.
    :func:`attribute_many` reports these instead of raising.

    Attributes:
        method: The method's name.
        reason: Why it cannot run, in one sentence.
    """

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"{method}: {reason}")
        self.method = method
        self.reason = reason


@dataclass
class AttributionResult:
    """Attributions of one method for a batch of inputs.

    Attributes:
        attributions: Detached, on the CPU, ``float32``, contiguous. For images and float
            sequences the shape of the inputs (Grad-CAM's one-channel map is repeated over the
            input channels); for token ids ``(N, L)``: one value per token, summed over the
            embedding dimension.
        method: The method's name (one of :data:`METHODS`).
        targets: The class attributed for each input, ``int64`` of shape ``(N,)``.
        layer: Qualified name of the layer used by Grad-CAM / guided Grad-CAM, else ``None``.
        note: Remarks worth showing next to the maps (all-zero maps, a method that reduces to
            another on this model); empty when there is nothing to say. The all-zero check (a
            reduction over the maps) runs when ``note`` is first read.
        seconds: Wall time of the call.
        settings: The effective method parameters (``n_steps``, ``nt_samples``...) and the
            ``internal_batch_size`` used.
        input_kind: ``"image"``, ``"sequence"`` or ``"tokens"``.
        embedding: For token inputs, the qualified name of the ``nn.Embedding`` the
            attributions were taken at; else ``None``.
    """

    attributions: torch.Tensor
    method: str
    targets: torch.Tensor
    layer: str | None = None
    note: str = ""
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    input_kind: InputKind = "image"
    embedding: str | None = None
    # The all-zero check still to add to ``note`` when it is first read: "" (none), "maps", or
    # "layer" (a layer method: no positive evidence at the layer).
    _zero_check: str = field(default="", repr=False, compare=False)

    def __getattribute__(self, name: str) -> Any:
        if name == "note" and object.__getattribute__(self, "_zero_check"):
            layer = object.__getattribute__(self, "_zero_check") == "layer"
            self._zero_check = ""
            extra = empty_maps_note(object.__getattribute__(self, "attributions"), layer)
            if extra:
                base = object.__getattribute__(self, "note")
                self.note = f"{base}; {extra}" if base else extra
        return object.__getattribute__(self, name)


def empty_maps_note(attributions: torch.Tensor, layer_method: bool) -> str:
    """The note on inputs whose map is all zeros, or ``""``.

    One reduction and one transfer of N numbers; only the (rare) maps whose largest value is
    zero are looked at again.
    """
    dims = tuple(range(1, attributions.ndim))
    top = attributions.amax(dim=dims).tolist() if dims else attributions.tolist()
    zero = [i for i, v in enumerate(top) if v == 0 and not bool(attributions[i].amin() < 0)]
    if not zero:
        return ""
    shown = ", ".join(map(str, zero[:8])) + (", ..." if len(zero) > 8 else "")
    note = f"all-zero map for {len(zero)} of {len(top)} inputs (indices {shown})"
    if layer_method:
        note += ": no positive evidence for the target class at this layer"
    return note
