"""Figures as compact JSON for the report.

A figure becomes ``{"data": [...], "layout": {...}}`` with three savings over ``fig.to_json()``:

- the layout template is dropped (the page applies one shared template);
- large float arrays are quantised to 8 or 16 bits between their finite min and max and
  base64-encoded as ``{"_q": bits, "b": ..., "lo": ..., "hi": ..., "shape": [...]}`` (NaN and
  Inf become the top code, drawn as gaps), zlib-compressed first (``"z": 1``) when that saves
  space; the page decodes them (``DecompressionStream``) before drawing. Small float arrays
  become lists rounded to 4 significant digits;
- a list that occurs several times in one figure (the same axis categories or colour scale on
  many traces) is stored once, in ``"_shared"``, and referenced as ``{"_ref": i}``;
- an ``image`` trace's uint8 RGB ``z`` becomes a PNG ``source``.

Integer arrays keep Plotly's own typed-array form (``dtype``/``bdata``), in the smallest type.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = ["compact_figure", "dumps_for_script", "figure_json"]

_DTYPES = {
    "f8": np.float64,
    "f4": np.float32,
    "i1": np.int8,
    "u1": np.uint8,
    "i2": np.int16,
    "u2": np.uint16,
    "i4": np.int32,
    "u4": np.uint32,
    "u1c": np.uint8,
}
_SMALL = 64  # arrays with fewer elements stay plain lists
_SHARE_MIN = 24  # lists at least this long may be shared


def _round(v: float) -> float | None:
    if not math.isfinite(v):
        return None
    if v == 0:
        return 0.0
    return float(f"{v:.4g}")


def _decode_typed(spec: dict[str, Any]) -> np.ndarray:
    dtype = _DTYPES[spec["dtype"]]
    arr = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(dtype).newbyteorder("<"))
    shape = spec.get("shape")
    if shape:
        dims = [int(s) for s in str(shape).split(",")] if isinstance(shape, str) else list(shape)
        arr = arr.reshape(dims)
    return arr


def _quantise(a: np.ndarray, bits: int) -> dict[str, Any]:
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    top = (1 << bits) - 1
    if finite.any():
        lo, hi = float(a[finite].min()), float(a[finite].max())
    else:
        lo = hi = 0.0
    span = hi - lo
    codes = np.full(a.shape, top, dtype=np.uint16 if bits == 16 else np.uint8)
    if span > 0:
        codes[finite] = np.rint((a[finite] - lo) / span * (top - 1)).astype(codes.dtype)
    else:
        codes[finite] = 0
    raw = codes.astype("<u2" if bits == 16 else "u1").tobytes()
    packed = zlib.compress(raw, 6)
    out: dict[str, Any] = {"_q": bits, "lo": lo, "hi": hi, "shape": list(a.shape)}
    if len(packed) < 0.9 * len(raw):  # maps with many zeros (ReLU) shrink a lot
        out["z"] = 1
        raw = packed
    out["b"] = base64.b64encode(raw).decode("ascii")
    return out


def _int_spec(a: np.ndarray) -> dict[str, Any] | list[Any]:
    a = np.asarray(a)
    if a.size < _SMALL:
        return a.tolist()
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    code, dt = "i4", np.int32
    for c, t in (("u1", np.uint8), ("i1", np.int8), ("u2", np.uint16), ("i2", np.int16)):
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            code, dt = c, t
            break
    out = {
        "dtype": code,
        "bdata": base64.b64encode(a.astype(np.dtype(dt).newbyteorder("<")).tobytes()).decode(
            "ascii"
        ),
    }
    if a.ndim > 1:
        out["shape"] = ", ".join(map(str, a.shape))
    return out


def _array(a: np.ndarray, bits: int) -> Any:
    if a.dtype == bool:
        return a.tolist()
    if np.issubdtype(a.dtype, np.integer):
        return _int_spec(a)
    if np.issubdtype(a.dtype, np.floating):
        if a.size >= _SMALL:
            return _quantise(a, bits)
        return [_round_nested(v) for v in a.tolist()]
    return a.tolist()


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float)) or v is None


def _shareable(items: list[Any]) -> bool:
    """Whether a list is worth sharing.

    Long lists of scalars (categories) and lists of short scalar lists (colour scales) are;
    lists holding objects or arrays never are.
    """
    if len(items) >= _SHARE_MIN and all(_scalar(v) for v in items):
        return True
    return len(items) >= 3 and all(
        isinstance(v, list) and len(v) <= 4 and all(_scalar(x) for x in v) for v in items
    )


def _round_nested(v: Any) -> Any:
    if isinstance(v, list):
        return [_round_nested(x) for x in v]
    if isinstance(v, float):
        return _round(v)
    return v


def compact_figure(fig: go.Figure | dict[str, Any], *, bits: int = 16) -> dict[str, Any]:
    """The figure as a compact JSON-able mapping (see the module docstring).

    Args:
        fig: A figure or its ``to_plotly_json()`` mapping.
        bits: Quantisation of large float arrays: 8 (maps, images) or 16 (weights, curves).

    Returns:
        ``{"data": [...], "layout": {...}}``, plus ``"_shared"`` when lists were shared.

    Raises:
        ValueError: If ``bits`` is not 8 or 16.
    """
    if bits not in (8, 16):
        raise ValueError(f"`bits` must be 8 or 16; got {bits!r}")
    raw = fig.to_plotly_json() if isinstance(fig, go.Figure) else dict(fig)
    raw = {**raw, "data": [_image_source(t) for t in raw.get("data", [])]}
    layout = dict(raw.get("layout", {}))
    layout.pop("template", None)
    shared: list[list[Any]] = []
    index: dict[str, int] = {}

    def walk(value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            if "dtype" in value and "bdata" in value:
                return _array(_decode_typed(value), bits)
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return _array(value, bits)
        if isinstance(value, (list, tuple)):
            items = [walk(v) for v in value]
            if _shareable(items):
                sig = json.dumps(items, separators=(",", ":"))
                if sig not in index:
                    index[sig] = len(shared)
                    shared.append(items)
                return {"_ref": index[sig]}
            if items and all(isinstance(v, float) or v is None for v in items):
                return [None if v is None else _round(v) for v in items]
            return items
        if isinstance(value, (np.floating, float)):
            return _round(float(value)) if key not in ("x0", "y0", "dx", "dy") else float(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.bool_):
            return bool(value)
        return value

    out: dict[str, Any] = {"data": walk(list(raw.get("data", []))), "layout": walk(layout)}
    if shared:
        counts = [0] * len(shared)
        _visit_refs(out, lambda ref: counts.__setitem__(ref, counts[ref] + 1))
        keep = [i for i, c in enumerate(counts) if c > 1]
        remap = {old: new for new, old in enumerate(keep)}
        out = _resolve(out, shared, remap)
        if keep:
            out["_shared"] = [shared[i] for i in keep]
    return out


def _image_source(trace: dict[str, Any]) -> dict[str, Any]:
    """An ``image`` trace's uint8 ``z`` pixels as a PNG ``source`` (several times smaller)."""
    if trace.get("type") != "image" or "z" not in trace or trace.get("source"):
        return trace
    z = trace["z"]
    if isinstance(z, dict) and "bdata" in z:
        z = _decode_typed(z)
    z = np.asarray(z)
    if z.dtype != np.uint8 or z.ndim != 3 or z.shape[2] != 3:
        return trace
    from cnnviz.figures.images import png_data_uri

    out = {k: v for k, v in trace.items() if k not in ("z", "colormodel", "zmin", "zmax")}
    out["source"] = png_data_uri(z)
    return out


def _visit_refs(value: Any, fn: Any) -> None:
    if isinstance(value, dict):
        if set(value) == {"_ref"}:
            fn(value["_ref"])
            return
        for v in value.values():
            _visit_refs(v, fn)
    elif isinstance(value, list):
        for v in value:
            _visit_refs(v, fn)


def _resolve(value: Any, shared: list[list[Any]], remap: dict[int, int]) -> Any:
    """Inline references used once; renumber the others."""
    if isinstance(value, dict):
        if set(value) == {"_ref"}:
            ref = value["_ref"]
            return {"_ref": remap[ref]} if ref in remap else shared[ref]
        return {k: _resolve(v, shared, remap) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, shared, remap) for v in value]
    return value


def dumps_for_script(value: Any) -> str:
    r"""JSON that is safe inside ``<script type="application/json">``.

    ``<``, ``>`` and ``&`` are written as ``\u003c``, ``\u003e``, ``\u0026`` (so neither
    ``</script>`` nor ``<!--`` can occur), and the line separators U+2028/9 are escaped.
    NaN/Inf become ``null``.
    """
    text = json.dumps(
        _finite(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
    )
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def figure_json(fig: go.Figure, *, bits: int = 16) -> str:
    """:func:`compact_figure` then :func:`dumps_for_script`."""
    return dumps_for_script(compact_figure(fig, bits=bits))
