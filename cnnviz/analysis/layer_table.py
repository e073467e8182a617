"""The lecture's layer table: shapes, output-size arithmetic, weight counts, receptive fields.

For every conv and pooling layer (optionally linear layers too) one :class:`LayerRow` shows the
numbers the lecture works out by hand, written out the same way::

    conv1  Conv2d     3x227x227 -> 96x55x55   (227 − 11 + 2·0)/4 + 1 = 55   11·11·3·96 + 96 = 34,944

Real PyTorch layers floor the division when the stride does not fit; the table then writes the
floor explicitly (``⌊(224 − 11 + 2·2)/4⌋ + 1 = 55``), while the pure helper
:func:`output_size` rejects such a configuration by default, as the lecture does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnviz._checks import check_int
from cnnviz.analysis.guard import HookSet, observe
from cnnviz.analysis.layers import CONV_TYPES, POOL_TYPES
from cnnviz.analysis.receptive_field import ReceptiveField, receptive_fields, shape_run

__all__ = [
    "LayerRow",
    "conv_weight_count",
    "format_layer_table",
    "layer_table",
    "output_size",
    "output_size_arithmetic",
]

_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def _check_int(name: str, value: Any, minimum: int) -> int:
    return int(check_int(None, name, value, low=minimum))  # type: ignore[arg-type]


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _numerator(n: int, f: int, p_left: int, p_right: int, d: int) -> str:
    kernel = str(f) if d == 1 else f"[{d}·({f} − 1) + 1]"
    pad = f"2·{p_left}" if p_left == p_right else f"{p_left} + {p_right}"
    return f"{n} − {kernel} + {pad}"


def output_size(n: int, f: int, p: int = 0, s: int = 1, d: int = 1, *, strict: bool = True) -> int:
    """Output size of a convolution or pooling window along one axis: ``(n − f + 2p)/s + 1``.

    Args:
        n: Input size (``N``).
        f: Filter size (``F``).
        p: Zero padding on each side (``P``).
        s: Stride (``S``).
        d: Dilation; the filter then spans ``d·(f − 1) + 1`` inputs.
        strict: Reject a stride that does not fit, as the lecture does (7x7 input, 3x3 filter,
            stride 3: ``(7 − 3)/3 + 1 = 2.33``). With ``strict=False`` floor it, as PyTorch's
            layers do.

    Returns:
        The output size.

    Raises:
        TypeError: If an argument is not an int.
        ValueError: If an argument is out of range, the filter is larger than the padded input,
            or (``strict``) the stride does not fit; the message shows the arithmetic.

    Example:
        >>> output_size(7, 3, s=2)
        3
        >>> output_size(32, 5, p=2)
        32
    """
    _check_int("n", n, 1)
    _check_int("f", f, 1)
    _check_int("p", p, 0)
    _check_int("s", s, 1)
    _check_int("d", d, 1)
    span = n - (d * (f - 1) + 1) + 2 * p
    if span < 0:
        raise ValueError(
            f"`f`: the filter spans {d * (f - 1) + 1} inputs, more than the padded input "
            f"{n} + 2·{p} = {n + 2 * p}; use a smaller filter or more padding `p`"
        )
    if span % s and strict:
        raise ValueError(
            f"`s`: stride {s} doesn't fit: ({_numerator(n, f, p, p, d)})/{s} + 1 = "
            f"{_fmt(span / s + 1)}; choose a stride that divides {span} or change the padding "
            f"(pass strict=False to floor it to {span // s + 1}, as PyTorch layers do)"
        )
    return span // s + 1


def output_size_arithmetic(
    n: int,
    f: int,
    p: int | tuple[int, int] = 0,
    s: int = 1,
    d: int = 1,
    *,
    ceil_mode: bool = False,
) -> tuple[int, str]:
    """Output size as PyTorch computes it, and the arithmetic written out.

    Args:
        n: Input size.
        f: Filter size.
        p: Padding per side, or ``(left, right)`` when asymmetric (``padding="same"``).
        s: Stride.
        d: Dilation.
        ceil_mode: Round up as pooling layers with ``ceil_mode=True`` do (a last window that
            would start in the right padding is dropped).

    Returns:
        ``(size, text)``, e.g. ``(55, "(227 − 11 + 2·0)/4 + 1 = 55")``; a stride that does not
        fit is written with the floor (or ceiling) brackets.

    Raises:
        ValueError: If the filter is larger than the padded input.

    Example:
        >>> output_size_arithmetic(224, 11, 2, 4)
        (55, '⌊(224 − 11 + 2·2)/4⌋ + 1 = 55')
    """
    p_left, p_right = (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))
    span = n - (d * (f - 1) + 1) + p_left + p_right
    if span < 0:
        raise ValueError(
            f"`f`: the filter spans {d * (f - 1) + 1} inputs, more than the padded input "
            f"{n + p_left + p_right}"
        )
    num = _numerator(n, f, p_left, p_right, d)
    if span % s == 0:
        size = span // s + 1
        return size, f"({num})/{s} + 1 = {size}"
    if not ceil_mode:
        size = span // s + 1
        return size, f"⌊({num})/{s}⌋ + 1 = {size}"
    size = -(-span // s) + 1
    if (size - 1) * s >= n + p_left:
        return size - 1, f"⌈({num})/{s}⌉ + 1 − 1 = {size - 1} (last window starts in the padding)"
    return size, f"⌈({num})/{s}⌉ + 1 = {size}"


def conv_weight_count(
    kernel_size: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    *,
    bias: bool = True,
    groups: int = 1,
) -> tuple[int, str]:
    """Number of weights of a convolution, written out as the lecture does.

    Args:
        kernel_size: ``F`` (square) or ``(F_h, F_w)`` / ``(F,)``.
        in_channels: Input depth.
        out_channels: Number of filters ``K``.
        bias: Count one bias per filter.
        groups: Channel groups; each filter sees ``in_channels / groups`` channels.

    Returns:
        ``(count, text)``, e.g. ``(760, "5·5·3·10 + 10 = 760")``.

    Raises:
        TypeError: If a size is not an int.
        ValueError: If a size is not positive or ``groups`` does not divide ``in_channels``.

    Example:
        >>> conv_weight_count(11, 3, 96)
        (34944, '11·11·3·96 + 96 = 34,944')
    """
    kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    for i, k in enumerate(kernel):
        _check_int(f"kernel_size[{i}]", k, 1)
    _check_int("in_channels", in_channels, 1)
    _check_int("out_channels", out_channels, 1)
    _check_int("groups", groups, 1)
    if in_channels % groups:
        raise ValueError(
            f"`groups` ({groups}) must divide `in_channels` ({in_channels}); each filter sees "
            "in_channels / groups channels"
        )
    depth = in_channels // groups
    count = depth * out_channels
    for k in kernel:
        count *= k
    text = "·".join(str(v) for v in (*kernel, depth, out_channels))
    if bias:
        count += out_channels
        text += f" + {out_channels}"
    return count, f"{text} = {count:,}"


@dataclass(frozen=True)
class LayerRow:
    """One row of :func:`layer_table`.

    Attributes:
        name: Qualified module name.
        type: Module class name.
        kind: ``"conv"``, ``"pool"`` or ``"linear"``.
        input_shape: Input shape without batch (``(C, H, W)``, ``(C, L)``, ``(features,)``).
        output_shape: Output shape without batch.
        kernel_size: Filter size per axis (derived for adaptive pools); ``None`` for linear.
        stride: Stride per axis; ``None`` for linear.
        padding: Padding per axis as ``(left, right)`` pairs; ``None`` for linear.
        dilation: Dilation per axis; ``None`` for linear.
        output_arithmetic: The output-size arithmetic, e.g. ``(227 − 11 + 2·0)/4 + 1 = 55``
            (one per axis, ``H: ...; W: ...``, when the axes differ).
        params: Number of parameters of the layer itself.
        params_arithmetic: Written out, e.g. ``11·11·3·96 + 96 = 34,944``; ``0`` for pooling.
        receptive_field: The layer's :class:`~cnnviz.analysis.receptive_field.ReceptiveField`,
            or ``None`` (linear layers, or ``receptive_field=False``).
        fits: ``False`` when some axis needed a floor/ceiling (the stride does not fit).
    """

    name: str
    type: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    kernel_size: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    padding: tuple[tuple[int, int], ...] | None
    dilation: tuple[int, ...] | None
    output_arithmetic: str
    params: int
    params_arithmetic: str
    receptive_field: ReceptiveField | None = None
    fits: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python form for JSON manifests."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "receptive_field"}
        out["receptive_field"] = (
            self.receptive_field.as_dict() if self.receptive_field is not None else None
        )
        return out


def _tuple(value: Any, n: int) -> tuple[Any, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(value) if len(value) == n else tuple(value) * n
    return (value,) * n


def _pads(module: nn.Module, nd: int, kernel: Sequence[int], dil: Sequence[int]) -> list:
    padding = getattr(module, "padding", 0)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        pads = []
        for k, d in zip(kernel, dil, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return pads
    return [(p, p) for p in _tuple(padding, nd)]


def _join(texts: Sequence[str], nd: int) -> str:
    if len(set(texts)) == 1:
        return texts[0]
    labels = ("H", "W") if nd == 2 else ("L",)
    return "; ".join(f"{label}: {t}" for label, t in zip(labels, texts, strict=True))


def _adaptive_text(n: int, o: int) -> tuple[int, int, str]:
    if o == 1:
        return n, n, f"global: f = {n} → 1"
    if n % o == 0:
        k = n // o
        return k, k, f"adaptive: f = s = {n}/{o} = {k}, ({n} − {k})/{k} + 1 = {o}"
    s = n // o
    k = n - (o - 1) * s
    return k, s, f"adaptive: {n} → {o} in bins of {n // o}–{-(-n // o)} (s ≈ {s}, f ≤ {k})"


def _window_row(
    name: str, module: nn.Module, kind: str, in_shape: tuple, out_shape: tuple
) -> LayerRow:
    nd = len(in_shape) - 1
    n_in, n_out = in_shape[1:], out_shape[1:]
    if isinstance(module, _ADAPTIVE):
        parts = [_adaptive_text(n, o) for n, o in zip(n_in, n_out, strict=True)]
        return LayerRow(
            name=name,
            type=type(module).__name__,
            kind=kind,
            input_shape=in_shape,
            output_shape=out_shape,
            kernel_size=tuple(p[0] for p in parts),
            stride=tuple(p[1] for p in parts),
            padding=tuple((0, 0) for _ in parts),
            dilation=(1,) * nd,
            output_arithmetic=_join([p[2] for p in parts], nd),
            params=0,
            params_arithmetic="0",
            fits=all(n % o == 0 for n, o in zip(n_in, n_out, strict=True)),
        )
    kernel = _tuple(module.kernel_size, nd)
    stride = getattr(module, "stride", None)
    stride = _tuple(kernel if stride is None or stride == () else stride, nd)
    dil = _tuple(getattr(module, "dilation", 1), nd)
    pads = _pads(module, nd, kernel, dil)
    ceil = bool(getattr(module, "ceil_mode", False))
    texts, fits = [], True
    for a in range(nd):
        size, text = output_size_arithmetic(
            n_in[a], kernel[a], pads[a], stride[a], dil[a], ceil_mode=ceil
        )
        if size != n_out[a]:
            text += f" (PyTorch gives {n_out[a]})"
        fits = fits and (n_in[a] - (dil[a] * (kernel[a] - 1) + 1) + sum(pads[a])) % stride[a] == 0
        texts.append(text)
    if kind == "conv":
        count, count_text = conv_weight_count(
            kernel,
            module.in_channels,
            module.out_channels,
            bias=module.bias is not None,
            groups=module.groups,
        )
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if params != count:  # e.g. an extra parameter on a subclass
            count_text += f" (module holds {params:,})"
    else:
        params = sum(p.numel() for p in module.parameters(recurse=False))
        count_text = f"{params:,}" if params else "0"
    return LayerRow(
        name=name,
        type=type(module).__name__,
        kind=kind,
        input_shape=in_shape,
        output_shape=out_shape,
        kernel_size=kernel,
        stride=stride,
        padding=tuple(pads),
        dilation=dil,
        output_arithmetic=_join(texts, nd),
        params=params,
        params_arithmetic=count_text,
        fits=fits,
    )


def _linear_row(name: str, module: nn.Linear, in_shape: tuple, out_shape: tuple) -> LayerRow:
    fan_in, fan_out = module.in_features, module.out_features
    count = fan_in * fan_out + (fan_out if module.bias is not None else 0)
    text = f"{fan_in}·{fan_out}" + (f" + {fan_out}" if module.bias is not None else "")
    return LayerRow(
        name=name,
        type=type(module).__name__,
        kind="linear",
        input_shape=in_shape,
        output_shape=out_shape,
        kernel_size=None,
        stride=None,
        padding=None,
        dilation=None,
        output_arithmetic=f"{fan_in} → {fan_out}",
        params=count,
        params_arithmetic=f"{text} = {count:,}",
    )


def _shapes(
    model: nn.Module, input_size: tuple[int, ...], include_linear: bool
) -> list[tuple[str, nn.Module, str, tuple, tuple]]:
    """Input/output shapes of every conv/pool (and linear) module, in first-call order."""
    wanted: list[tuple[str, nn.Module, str]] = []
    for name, m in model.named_modules():
        if isinstance(m, CONV_TYPES):
            wanted.append((name, m, "conv"))
        elif isinstance(m, POOL_TYPES):
            wanted.append((name, m, "pool"))
        elif include_linear and isinstance(m, nn.Linear):
            wanted.append((name, m, "linear"))
    seen: dict[str, tuple] = {}

    def run(x: torch.Tensor) -> None:
        seen.clear()
        model(x)

    with observe(model), torch.no_grad(), HookSet() as hooks:
        for name, m, _ in wanted:

            def hook(_m: nn.Module, inputs: Any, out: Any, name: str = name) -> None:
                x = inputs[0] if isinstance(inputs, tuple) and inputs else None
                if name not in seen and isinstance(x, torch.Tensor):
                    if isinstance(out, (tuple, list)):
                        out = out[0]
                    seen[name] = (tuple(x.shape[1:]), tuple(out.shape[1:]))

            hooks.add(m.register_forward_hook(hook))
        shape_run(model, input_size, run)
    order = {name: i for i, name in enumerate(seen)}
    rows = [(n, m, k, *seen[n]) for n, m, k in wanted if n in seen]
    rows.sort(key=lambda r: order[r[0]])
    return rows


def layer_table(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    include_linear: bool = False,
    receptive_field: bool = True,
) -> list[LayerRow]:
    """The lecture's table for ``model``: one row per conv and pooling layer, in forward order.

    Shapes come from one forward pass of a zero batch of one under
    :func:`~cnnviz.analysis.guard.observe` (eval mode, RNG forked, hooks removed), run on the
    ``meta`` device (shapes only) when possible. Layers not called in that pass are left out.

    Args:
        model: Any ``nn.Module``.
        input_size: Input shape without batch: ``(C, H, W)``, ``(C, L)`` or ``(L,)`` token ids.
        include_linear: Add rows for ``nn.Linear`` layers (weights ``in·out + out``).
        receptive_field: Fill :attr:`LayerRow.receptive_field` with
            :func:`~cnnviz.analysis.receptive_field.receptive_fields` (needs a model that
            ``torch.fx`` can trace; pass ``False`` otherwise).

    Returns:
        The rows.

    Raises:
        TypeError: If ``model`` is not a module or ``input_size`` is not a shape.
        ValueError: If ``input_size`` has non-positive sizes, or (``receptive_field``) the model
            cannot be analysed (see :func:`~cnnviz.analysis.receptive_field.receptive_fields`).

    Example:
        >>> rows = layer_table(cnnviz.models.create("alexnet"), (3, 227, 227))
        >>> rows[0].output_shape, rows[0].output_arithmetic, rows[0].params_arithmetic
        ((96, 55, 55), '(227 − 11 + 2·0)/4 + 1 = 55', '11·11·3·96 + 96 = 34,944')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(input_size, (tuple, list, torch.Size)) or not 1 <= len(input_size) <= 3:
        raise TypeError(
            "`input_size` must be the input shape without batch: (C, H, W), (C, L) or (L,); "
            f"got {input_size!r}"
        )
    size = tuple(input_size)
    for v in size:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"`input_size` must hold positive ints; got {size!r}")
    rfs = receptive_fields(model, size) if receptive_field else {}
    rows = []
    for name, module, kind, in_shape, out_shape in _shapes(model, size, include_linear):
        if kind == "linear":
            rows.append(_linear_row(name, module, in_shape, out_shape))
            continue
        row = _window_row(name, module, kind, in_shape, out_shape)
        if name in rfs:
            row = LayerRow(**{**row.__dict__, "receptive_field": rfs[name]})
        rows.append(row)
    return rows


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


def format_layer_table(rows: Sequence[LayerRow]) -> str:
    """Render rows as a fixed-width text table (for terminals, logs and notebooks).

    Example:
        >>> print(format_layer_table(layer_table(model, (3, 32, 32))))
    """
    header = ("layer", "type", "input", "output", "output size", "weights", "RF")
    lines = [header]
    for r in rows:
        rf = r.receptive_field
        rf_text = "" if rf is None else "x".join(str(v) for v in rf.size)
        lines.append(
            (
                r.name,
                r.type,
                _shape_text(r.input_shape),
                _shape_text(r.output_shape),
                r.output_arithmetic,
                r.params_arithmetic,
                rf_text,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
