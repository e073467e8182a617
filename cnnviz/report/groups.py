"""Layer groups: a deep network's layers by stage or block, for a page that stays usable.

A network with more than :data:`GROUP_FROM` recorded layers is shown as groups of at most about
:data:`MAX_GROUP` layers, following the module tree: the layers under one module path prefix
(``features.denseblock3``, ``blocks.2``, ``layer1``) form a group; a prefix with too many layers
is split at its next level, and where that gives many small children (``denselayer1`` ..
``denselayer24``), consecutive children are packed into balanced groups. Layers of a flat
``nn.Sequential`` are split where their output resolution changes. Consecutive single-layer
groups (a stem's conv and pool) are merged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["GROUP_FROM", "MAX_GROUP", "LayerGroup", "group_layers", "strip_prefix"]

#: Pages with more recorded layers than this are grouped (and the groups collapsed).
GROUP_FROM = 12
#: Layers per group at most (a child module larger than this is split further).
MAX_GROUP = 24
#: A module with more children than this has its children packed into groups.
MAX_CHILDREN = 16


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive layers shown together.

    Attributes:
        title: The module path prefix they share, and which children when packed
            (``features.denseblock3 · denselayer1–12``).
        layers: Qualified layer names, in the model's order.
    """

    title: str
    layers: tuple[str, ...]


def _parts(name: str) -> list[str]:
    return name.split(".")


def _runs(names: Sequence[str], depth: int) -> list[list[str]]:
    """Consecutive runs of names sharing their component at ``depth`` (or being that short)."""
    runs: list[list[str]] = []
    key: object = object()
    for n in names:
        p = _parts(n)
        k = p[depth] if len(p) > depth + 1 else ("\0leaf", n)
        if runs and k == key:
            runs[-1].append(n)
        else:
            runs.append([n])
            key = k
    return runs


def _by_resolution(names: Sequence[str], sizes: Mapping[str, tuple[int, ...]]) -> list[list[str]]:
    out: list[list[str]] = []
    last: object = object()
    for n in names:
        size = sizes.get(n)
        if out and (size == last or size is None):
            out[-1].append(n)
        else:
            out.append([n])
        if size is not None:
            last = size
    return out


def _pack(runs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Consecutive runs packed into balanced chunks of at most about ``MAX_GROUP`` layers."""
    total = sum(len(r) for r in runs)
    chunks = max(1, math.ceil(total / MAX_GROUP))
    target = math.ceil(total / chunks)
    out: list[list[str]] = [[]]
    for r in runs:
        if out[-1] and len(out[-1]) + len(r) > target:
            out.append([])
        out[-1].extend(r)
    return out


def _split(names: list[str], depth: int, sizes: Mapping[str, tuple[int, ...]]) -> list[list[str]]:
    if len(names) <= MAX_GROUP:
        return [names]
    runs = _runs(names, depth)
    if len(runs) == 1:
        return _split(names, depth + 1, sizes)
    leaves = all(len(r) == 1 and len(_parts(r[0])) <= depth + 1 for r in runs)
    if leaves:  # a flat Sequential: split where the resolution changes
        return [c for chunk in _by_resolution(names, sizes) for c in _pack([[n] for n in chunk])]
    if len(runs) > MAX_CHILDREN or max(len(r) for r in runs) <= 3:
        return _pack(runs)
    out: list[list[str]] = []
    for r in runs:
        out += _split(r, depth + 1, sizes) if len(r) > MAX_GROUP else [r]
    return out


def _merge_singles(groups: list[list[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    for g in groups:
        if out and len(g) == 1 and len(out[-1]) <= 2 and len(out[-1]) < MAX_GROUP:
            out[-1].extend(g)
        else:
            out.append(list(g))
    return out


def _common_prefix(names: Sequence[str]) -> list[str]:
    split = [_parts(n) for n in names]
    prefix: list[str] = []
    for parts in zip(*split, strict=False):
        if all(p == parts[0] for p in parts):
            prefix.append(parts[0])
        else:
            break
    if len(prefix) == len(split[0]) and len(names) > 1:  # one name is a prefix of another
        prefix = prefix[:-1]
    return prefix


def _title(names: Sequence[str], everything: Sequence[str]) -> str:
    """The shared module prefix; with which children when the group holds only some of them."""
    if len(names) == 1:
        return names[0]
    prefix = _common_prefix(names)
    head = ".".join(prefix)
    under = [n for n in everything if _parts(n)[: len(prefix)] == prefix]
    if head and len(under) == len(names):
        return head
    children = list(dict.fromkeys(_parts(n)[len(prefix)] for n in names))
    tail = ", ".join(children) if len(children) <= 2 else f"{children[0]}–{children[-1]}"
    return f"{head} · {tail}" if head else tail


def group_layers(
    layers: Sequence[str], sizes: Mapping[str, tuple[int, ...]] | None = None
) -> list[LayerGroup]:
    """Group ``layers`` (in the model's order) for the page.

    Args:
        layers: Qualified layer names, in the model's order.
        sizes: Output spatial size of each layer (splits flat sequences), where known.

    Returns:
        The groups, in order; a single group when the network is small (up to
        :data:`GROUP_FROM` layers) or does not split.

    Example:
        >>> [g.title for g in group_layers([f"blocks.{i}.{j}.conv" for i in range(3) for j in
        ...                                 range(9)])]
        ['blocks.0', 'blocks.1', 'blocks.2']
    """
    names = list(layers)
    if len(names) <= GROUP_FROM:
        return [LayerGroup(_title(names, names) if names else "", tuple(names))]
    chunks = _merge_singles(_split(names, 0, sizes or {}))
    titles = [_title(c, names) for c in chunks]
    seen: dict[str, int] = {}
    out = []
    for chunk, title in zip(chunks, titles, strict=True):
        seen[title] = seen.get(title, 0) + 1
        if titles.count(title) > 1:
            title = f"{title} ({seen[title]})"
        out.append(LayerGroup(title, tuple(chunk)))
    return out


def strip_prefix(names: Sequence[str], within: Sequence[str]) -> list[str]:
    """``names`` without the module path prefix all of ``within`` share (short labels).

    Example:
        >>> strip_prefix(["net.features.conv0"], ["net.features.conv0", "net.features.pool0"])
        ['conv0']
    """
    prefix = ".".join(_common_prefix(list(within))) if len(within) > 1 else ""
    cut = len(prefix) + 1 if prefix else 0
    return [n[cut:] if prefix and n.startswith(prefix + ".") else n for n in names]
