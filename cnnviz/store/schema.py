"""The machinery of typed records: field types, array declarations and their validation.

A record kind is a frozen dataclass (see :mod:`cnnviz.store.records`): its *meta* fields are
small JSON values, its *array* fields (declared with ``field(**array(...))``) live in the record's
``.npz`` file. :func:`check_value` validates a JSON value against a field's type annotation
(the writer is strict, the reader skips what does not fit), :func:`check_array` validates and
normalises an array against its :class:`ArraySpec`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import numpy as np

__all__ = [
    "JSON",
    "ArraySpec",
    "Coerce",
    "Padding",
    "PerAxis",
    "RecordError",
    "array",
    "array_specs",
    "check_array",
    "check_value",
    "describe_type",
    "to_json",
]

DTypeFamily = Literal["float", "int", "bool", "number", "any"]
_FAMILY_KINDS = {
    "float": "biuf",  # stored as float32
    "int": "iu",
    "bool": "b",
    "number": "biuf",  # floats stored as float32
    "any": "biuf",
}
_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class RecordError(ValueError):
    """A record (or one of its fields or arrays) does not fit its kind's declaration."""


@dataclass(frozen=True)
class ArraySpec:
    """One array of a record kind.

    Attributes:
        name: Member name in the ``.npz`` file; ``"*"`` for "any other name" (one array per
            attribution method).
        dtype: ``"float"`` (stored as float32), ``"int"``, ``"bool"``, ``"number"`` (int or
            float; floats stored as float32) or ``"any"`` (bool, int or float).
        ndim: The allowed numbers of dimensions.
        required: Whether every record of the kind has it.
        doc: What it holds (for docs/store-format.md).
    """

    name: str
    dtype: DTypeFamily
    ndim: tuple[int, ...]
    required: bool = True
    doc: str = ""


def array(
    dtype: DTypeFamily, ndim: int | tuple[int, ...], *, required: bool = True, doc: str = ""
) -> dict[str, Any]:
    """Keyword arguments of ``dataclasses.field`` for an array field of a record.

    The array lives in the record's ``.npz`` file:
    ``weight: np.ndarray = field(**array("float", (3, 4)))``.

    Args:
        dtype: The dtype family (see :class:`ArraySpec`).
        ndim: Allowed number(s) of dimensions.
        required: Whether the array must be present (optional arrays default to ``None``).
        doc: Shape and meaning, for the format document.

    Returns:
        ``compare=False, repr=False`` and the declaration in ``metadata`` (plus
        ``default=None`` for an optional array).
    """
    dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    kw: dict[str, Any] = {
        "compare": False,
        "repr": False,
        "metadata": {"array": (dtype, dims, required, doc)},
    }
    if not required:
        kw["default"] = None
    return kw


@functools.cache
def array_specs(cls: type) -> tuple[tuple[str, ArraySpec], ...]:
    """``(field name, spec)`` for every array field of a record class, in declaration order.

    A field annotated as a mapping (``Mapping[str, np.ndarray]``) holds the ``"*"`` arrays.
    Cached per class (resolving the type hints is slow and every record read needs them).
    """
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "array" not in f.metadata:
            continue
        dtype, dims, required, doc = f.metadata["array"]
        wildcard = get_origin(hints[f.name]) in (Mapping, dict, typing.Mapping)
        out.append((f.name, ArraySpec("*" if wildcard else f.name, dtype, dims, required, doc)))
    return tuple(out)


# -- field types --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Coerce:
    """``Annotated`` marker: apply ``fn`` to a value before checking it against the type."""

    fn: Callable[[Any], Any]
    doc: str


def _per_axis(value: Any) -> Any:
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


#: One int per spatial axis; a single int is read as one axis.
PerAxis = Annotated[tuple[int, ...], Coerce(_per_axis, "int or list of int (one per axis)")]
#: Padding per axis: an int, or a ``[before, after]`` pair where they differ.
Padding = Annotated[
    tuple[Union[int, tuple[int, int]], ...],  # noqa: UP007 (a runtime object on Python 3.10)
    Coerce(_per_axis, "list of int or [before, after] per axis"),
]
#: Any JSON value (settings).
JSON = Any


def _fail(where: str, want: str, value: Any) -> RecordError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return RecordError(f"`{where}` must be {want}; got {shown}")


def check_value(value: Any, tp: Any, where: str, *, strict: bool) -> Any:
    """Validate a JSON value against a field type; return it normalised.

    Lists become tuples, nested records become their dataclasses, ``None`` in a ``float``
    (JSON has no NaN) becomes ``nan``.

    Args:
        value: The value (already JSON-like: see :func:`to_json`).
        tp: The type annotation.
        where: The field's name, for the message.
        strict: Reject unknown keys of nested records (the writer); the reader ignores them.

    Raises:
        RecordError: Naming ``where`` and what was expected.
    """
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extra = get_args(tp)
        for marker in extra:
            if isinstance(marker, Coerce):
                value = marker.fn(value)
        return check_value(value, base, where, strict=strict)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return check_value(value, option, where, strict=strict)
            except RecordError as err:
                errors.append(err)
        raise _fail(where, describe_type(tp), value)
    if origin is Literal:
        if value not in get_args(tp):
            raise _fail(where, describe_type(tp), value)
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _fail(where, describe_type(tp), value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(
                check_value(v, args[0], f"{where}[{i}]", strict=strict) for i, v in enumerate(value)
            )
        if len(value) != len(args):
            raise _fail(where, describe_type(tp), value)
        return tuple(
            check_value(v, a, f"{where}[{i}]", strict=strict)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (dict, Mapping, typing.Mapping):
        _, val_t = get_args(tp)
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _fail(where, describe_type(tp), value)
        return {k: check_value(v, val_t, f"{where}.{k}", strict=strict) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            value = to_json(value)
        if not isinstance(value, Mapping):
            raise _fail(where, f"an object ({tp.__name__})", value)
        return build_dataclass(tp, value, where, strict=strict)
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, "an int", value)
        return value
    if tp is float:
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, "a string", value)
        return value
    if tp is type(None):
        if value is not None:
            raise _fail(where, "null", value)
        return None
    raise TypeError(f"unsupported field type {tp!r} for `{where}`")  # a schema bug


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` with ``Annotated`` extras, cached per class.

    Resolving them is slow and every record read needs them. Do not modify the result.
    """
    return typing.get_type_hints(cls, include_extras=True)


@functools.cache
def _init_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """The ``__init__`` fields of a dataclass by name (cached)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def build_dataclass(cls: type, values: Mapping[str, Any], where: str, *, strict: bool) -> Any:
    """A (nested, meta-only) dataclass from JSON fields, each checked against its type."""
    hints, fields = type_hints(cls), _init_fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown and strict:
        raise RecordError(
            f"`{where}.{unknown[0]}` is not a field of {cls.__name__}; fields are: "
            + ", ".join(fields)
        )
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            kwargs[name] = check_value(values[name], hints[name], f"{where}.{name}", strict=strict)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecordError(f"`{where}.{name}` is required ({describe_type(hints[name])})")
    return cls(**kwargs)


def to_json(value: Any) -> Any:
    """Plain JSON values for ``value``.

    Numpy/torch scalars and arrays become lists, tuples lists, dataclasses objects (without
    their arrays), NaN/Inf ``None`` (JSON has neither).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if "array" not in f.metadata and f.init and f.name != "header"
        }
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value if not isinstance(value, float) or math.isfinite(value) else None
    if hasattr(value, "tolist"):
        return to_json(value.tolist())
    return str(value)


def describe_type(tp: Any) -> str:
    """A short, readable name of a field type (for messages and the format document)."""
    if tp is Any:
        return "any JSON"
    origin = get_origin(tp)
    if origin is Annotated:
        for marker in get_args(tp)[1:]:
            if isinstance(marker, Coerce):
                return marker.doc
        return describe_type(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        parts = [describe_type(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {describe_type(args[0])}"
        return "[" + ", ".join(describe_type(a) for a in args) + "]"
    if origin in (dict, Mapping, typing.Mapping):
        return f"{{str: {describe_type(get_args(tp)[1])}}}"
    if dataclasses.is_dataclass(tp):
        return f"object ({tp.__name__})"
    return {int: "int", float: "float", str: "string", bool: "bool", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# -- arrays -------------------------------------------------------------------------------------
def _host(value: Any) -> np.ndarray:
    """A numpy array from an array or tensor (tensors are copied to the host; bf16 to float32)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def host_array(value: Any, spec: ArraySpec, where: str) -> np.ndarray:
    """Take an array to host memory now (the training thread), checking what is cheap to check.

    Raises:
        RecordError: For a wrong dtype family or number of dimensions.
    """
    try:
        arr = _host(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise RecordError(f"array `{where}` is not an array ({err})") from err
    family = _FAMILY_KINDS[spec.dtype]
    if arr.dtype.kind not in family:
        raise RecordError(
            f"array `{where}` must hold {spec.dtype} values; got dtype {arr.dtype} "
            "(convert it before writing)"
        )
    if arr.ndim not in spec.ndim:
        raise RecordError(
            f"array `{where}` must have {' or '.join(map(str, spec.ndim))} dimensions; "
            f"got shape {tuple(arr.shape)}"
        )
    return arr


def normalise_array(arr: np.ndarray, spec: ArraySpec) -> np.ndarray:
    """Stored form: floating arrays (and numbers in a ``"float"`` array) as float32."""
    if spec.dtype == "float" and arr.dtype != np.float32:
        return arr.astype(np.float32)
    if spec.dtype in ("number", "any") and arr.dtype.kind == "f" and arr.dtype != np.float32:
        return arr.astype(np.float32)
    return arr


def check_array(arr: np.ndarray, spec: ArraySpec, where: str) -> np.ndarray:
    """Validate a loaded or given array against ``spec``; return its stored form."""
    return normalise_array(host_array(arr, spec, where), spec)


def check_header_array(dtype: np.dtype, shape: tuple[int, ...], spec: ArraySpec) -> str | None:
    """Why an array with this dtype and shape (from an ``.npy`` header) does not fit, or None."""
    if dtype.kind not in _FAMILY_KINDS[spec.dtype] or dtype.hasobject:
        return f"dtype {dtype} (expected {spec.dtype})"
    if len(shape) not in spec.ndim:
        return f"shape {tuple(shape)} (expected {' or '.join(map(str, spec.ndim))} dimensions)"
    return None


def valid_array_name(name: str) -> bool:
    """Whether ``name`` can be an ``.npz`` member name of the store."""
    return bool(_ARRAY_NAME.match(name))
