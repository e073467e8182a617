"""The data-flow tracker behind :func:`~cnnviz.analysis.readout.find_readouts`.

:class:`_Discovery` is a :class:`~torch.overrides.TorchFunctionMode` plus module pre/post hooks
that follow each conv's output (first call) through normalisation, pass-through ops,
permutations, one residual ``add`` and channel concatenation up to the first activation, and
turn what it saw into one :class:`~cnnviz.analysis.readout.Readout` per layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnviz.analysis.readout._ops import (
    _ACTIVATION_OPS,
    _ADD_OPS,
    _CAT_OPS,
    _NORM_OPS,
    _PASS_OPS,
    _PERMUTE_OPS,
    _SAME_SHAPE_OPS,
    _TRANSPOSE_OPS,
    _is_activation_module,
    _is_norm_module,
    _is_transparent,
    _op_key,
    _version,
)
from cnnviz.analysis.readout.sites import Readout, ReadSite, Stage, _role


@dataclass(frozen=True)
class _Trace:
    """One conv's maps inside a tensor: where its channels are and how it got there."""

    layer: str
    offset: int
    count: int
    dims: tuple[int, ...]  # for each axis of the tensor, the conv output's axis it holds
    steps: tuple[str, ...] = ()
    residual: bool = False

    @property
    def axis(self) -> int:
        return self.dims.index(1)


class _Node:
    """A tensor value (object at one version) with the traces it carries and where it is seen."""

    __slots__ = ("modules", "op", "tensor", "traces", "version")

    def __init__(self, tensor: torch.Tensor, traces: dict[str, _Trace]) -> None:
        self.tensor = tensor  # a strong reference: ids stay unique while discovery runs
        self.version = _version(tensor)
        self.traces = traces
        self.modules: list[tuple[str, int]] = []  # (module, call index), innermost first
        self.op: tuple[str, int, str] | None = None  # (function, occurrence, scope)


@dataclass
class _Frame:
    module: nn.Module
    name: str
    activation: bool
    saved: dict[str, _Trace]


class _Discovery(TorchFunctionMode):
    """Follows conv outputs by data flow during one forward pass (see :func:`find_readouts`)."""

    def __init__(self, modules: dict[str, nn.Module], convs: set[str]) -> None:
        super().__init__()
        self.modules = modules
        self.convs = convs
        self.latest: dict[int, _Node] = {}
        self.counts: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.frames: list[_Frame] = []
        self.suspend = 0
        self.busy = False
        self.final: dict[str, tuple[_Trace, _Node]] = {}
        # per conv without an activation (yet): the stage to read and the equivalent tensors
        # (the normalisation's output, then the same values passed on: permuted back...)
        self.fallback: dict[str, tuple[Stage, list[tuple[_Trace, _Node]]]] = {}
        self.failed: dict[str, str] = {}
        self.ended: dict[str, str] = {}
        self.error: str | None = None

    # -- bookkeeping ------------------------------------------------------------------------
    def _done(self, layer: str) -> bool:
        return layer in self.final or layer in self.failed

    def _live(self, tensor: torch.Tensor) -> _Node | None:
        node = self.latest.get(id(tensor))
        if node is None or node.tensor is not tensor or node.version != _version(tensor):
            return None
        return node

    def _live_traces(self, node: _Node | None) -> dict[str, _Trace]:
        if node is None:
            return {}
        return {k: t for k, t in node.traces.items() if not self._done(k)}

    def _fresh(self, tensor: torch.Tensor, traces: dict[str, _Trace]) -> _Node:
        node = _Node(tensor, traces)
        self.latest[id(tensor)] = node
        return node

    def _scope(self) -> str:
        return self.frames[-1].name if self.frames else ""

    def _step(self, key: str) -> str:
        scope = self._scope()
        if key in _NORM_OPS and scope and _is_norm_module(self.modules.get(scope)):
            return scope
        name = key.rstrip("_")
        return f"{name}() in {scope}" if scope else f"{name}()"

    def _fail(self, layers: Iterable[str], reason: str) -> None:
        for layer in layers:
            if not self._done(layer):
                self.failed[layer] = reason

    def _finalize(self, traces: dict[str, _Trace], node: _Node, step: str) -> None:
        for layer, trace in traces.items():
            if not self._done(layer):
                self.final[layer] = (replace(trace, steps=(*trace.steps, step)), node)

    # -- the function mode ------------------------------------------------------------------
    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self.busy:
            return func(*args, **kwargs)
        traced: list[tuple[torch.Tensor, _Node, dict[str, _Trace]]] = []
        if self.latest:
            try:
                traced = self._traced_inputs(args, kwargs)
            except Exception as err:  # never let discovery take the forward down
                self.error = f"{type(err).__name__}: {err}"
        out = func(*args, **kwargs)
        key = _op_key(func)
        occurrence = self.counts.get(key, 0)
        self.counts[key] = occurrence + 1
        if traced:
            self.busy = True
            try:
                self._after(key, occurrence, args, kwargs, out, traced)
            except Exception as err:
                layers = [k for _, _, live in traced for k in live]
                self._fail(layers, f"following {key}() failed: {type(err).__name__}: {err}")
            finally:
                self.busy = False
        return out

    def _traced_inputs(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> list[tuple[torch.Tensor, _Node, dict[str, _Trace]]]:
        found = []
        seen: set[int] = set()
        for value in (*args, *kwargs.values()):
            items = value if isinstance(value, (list, tuple)) else (value,)
            for item in items:
                if not isinstance(item, torch.Tensor) or id(item) in seen:
                    continue
                seen.add(id(item))
                node = self._live(item)
                live = self._live_traces(node)
                if node is not None and live:
                    found.append((item, node, live))
        return found

    def _after(
        self,
        key: str,
        occurrence: int,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        out: Any,
        traced: list[tuple[torch.Tensor, _Node, dict[str, _Trace]]],
    ) -> None:
        followed = False
        if isinstance(out, torch.Tensor) and not self.suspend:
            followed = self._follow(key, occurrence, args, kwargs, out, traced)
        if followed:
            return
        for tensor, node, live in traced:
            if isinstance(out, torch.Tensor):
                for layer in live:
                    self.ended.setdefault(layer, self._step(key))
            if _version(tensor) != node.version and self.latest.get(id(tensor)) is node:
                del self.latest[id(tensor)]  # changed in place by an op not followed

    def _follow(
        self,
        key: str,
        occurrence: int,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        out: torch.Tensor,
        traced: list[tuple[torch.Tensor, _Node, dict[str, _Trace]]],
    ) -> bool:
        by_id = {id(t): live for t, _, live in traced}
        nodes = {id(t): node for t, node, _ in traced}
        data = args[0] if args else kwargs.get("input", kwargs.get("self"))
        live = by_id.get(id(data)) if isinstance(data, torch.Tensor) else None

        if key in _ACTIVATION_OPS:
            if not live or out.shape != data.shape:
                return False
            node = self._fresh(out, {})
            node.op = (key, occurrence, self._scope())
            self._finalize(live, node, self._step(key))
            return True

        if key in _NORM_OPS:
            if not live or out.shape != data.shape:
                return False
            step = self._step(key)
            traces = {k: replace(t, steps=(*t.steps, step)) for k, t in live.items()}
            node = self._fresh(out, traces)
            node.op = (key, occurrence, self._scope())
            for layer, trace in traces.items():
                if trace.residual:
                    continue
                current = self.fallback.get(layer)
                steps = current[1][0][0].steps if current else ()
                if trace.steps[: len(steps)] == steps:
                    self.fallback[layer] = ("norm", [(trace, node)])
            return True

        if key in _PASS_OPS or key in _SAME_SHAPE_OPS:
            if not live or out.shape != data.shape:
                return False
            if out is not data or _version(out) != nodes[id(data)].version:
                self._moved(nodes[id(data)], self._fresh(out, dict(live)))
            return True

        if key in _PERMUTE_OPS or key in _TRANSPOSE_OPS:
            if not live:
                return False
            order = self._permutation(key, args, kwargs, data.dim())
            if order is None:
                return False
            traces = {k: replace(t, dims=tuple(t.dims[i] for i in order)) for k, t in live.items()}
            self._moved(nodes[id(data)], self._fresh(out, traces))
            return True

        if key in _ADD_OPS:
            other = args[1] if len(args) > 1 else kwargs.get("other")
            if not (isinstance(data, torch.Tensor) and isinstance(other, torch.Tensor)):
                return False
            if not (data.shape == other.shape == out.shape) or kwargs.get("alpha", 1) != 1:
                return False
            traces: dict[str, _Trace] = {}
            for operand in (data, other):
                for k, t in by_id.get(id(operand), {}).items():
                    if not t.residual and k not in traces:
                        traces[k] = replace(t, steps=(*t.steps, "+ residual"), residual=True)
            if not traces:
                return False
            self._fresh(out, traces)
            return True

        if key in _CAT_OPS:
            return self._follow_cat(args, kwargs, out, by_id)
        return False

    def _moved(self, source: _Node, node: _Node) -> None:
        """A normalisation's output passed on unchanged: read it where it is passed to."""
        for layer, trace in node.traces.items():
            current = self.fallback.get(layer)
            if current is not None and current[0] == "norm" and current[1][-1][1] is source:
                current[1].append((trace, node))

    @staticmethod
    def _permutation(
        key: str, args: Sequence[Any], kwargs: Mapping[str, Any], ndim: int
    ) -> tuple[int, ...] | None:
        if key in _PERMUTE_OPS:
            rest = list(args[1:]) or [kwargs.get("dims")]
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            order = tuple(int(d) % ndim for d in dims)
            return order if sorted(order) == list(range(ndim)) else None
        rest = list(args[1:3])
        if len(rest) < 2:
            rest = [
                kwargs.get("dim0", kwargs.get("axis0")),
                kwargs.get("dim1", kwargs.get("axis1")),
            ]
        if any(r is None for r in rest):
            return None
        a, b = (int(r) % ndim for r in rest)
        order = list(range(ndim))
        order[a], order[b] = order[b], order[a]
        return tuple(order)

    def _follow_cat(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        out: torch.Tensor,
        by_id: dict[int, dict[str, _Trace]],
    ) -> bool:
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return False
        dim %= out.dim()
        traces: dict[str, _Trace] = {}
        offset = 0
        for item in tensors:
            if not isinstance(item, torch.Tensor):
                return False
            for k, t in by_id.get(id(item), {}).items():
                if t.axis == dim and k not in traces:
                    start = offset + t.offset
                    step = f"cat[{start}:{start + t.count}]"
                    traces[k] = replace(t, offset=start, steps=(*t.steps, step))
            offset += item.shape[dim] if item.dim() > dim else 0
        if not traces:
            return False
        self._fresh(out, traces)
        return True

    # -- module hooks -----------------------------------------------------------------------
    def pre_hook(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.busy = True
        try:
            if name == "" and not self.frames:
                self.counts.clear()  # occurrences count from the model's call, as when reading
            activation = _is_activation_module(module)
            saved: dict[str, _Trace] = {}
            if activation:
                self.suspend += 1
                first = args[0] if args else None
                if isinstance(first, torch.Tensor):
                    saved = self._live_traces(self._live(first))
            self.frames.append(_Frame(module, name, activation, saved))
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.busy = False

    def post_hook(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.busy = True
        try:
            frame = None
            while self.frames:
                frame = self.frames.pop()
                if frame.module is module:
                    break
            index = self.calls.get(name, 0)
            self.calls[name] = index + 1
            if frame is not None and frame.module is module and frame.activation:
                self.suspend = max(0, self.suspend - 1)
                if frame.saved and isinstance(output, torch.Tensor):
                    first = args[0] if args else None
                    if isinstance(first, torch.Tensor) and output.shape == first.shape:
                        self._finalize(frame.saved, self._fresh(output, {}), name)
            if not isinstance(output, torch.Tensor):
                return
            if name in self.convs and index == 0 and output.dim() >= 2:
                try:
                    trace = _Trace(
                        layer=name,
                        offset=0,
                        count=int(output.shape[1]),
                        dims=tuple(range(output.dim())),
                    )
                    node = self._fresh(output, {name: trace})
                    self.fallback[name] = ("raw", [(trace, node)])
                except Exception as err:
                    self._fail([name], f"{type(err).__name__}: {err}")
            node = self._live(output)
            if node is not None:
                node.modules.append((name, index))
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.busy = False

    # -- results ----------------------------------------------------------------------------
    def _site(self, node: _Node) -> ReadSite | None:
        if node.modules:
            chosen = next(
                (m for m in node.modules if not _is_transparent(self.modules[m[0]])),
                node.modules[0],
            )
            name, index = chosen
            return ReadSite("module", name, index, self.calls.get(name, index + 1))
        if node.op is not None:
            key, occurrence, scope = node.op
            return ReadSite(
                "function", key, occurrence, self.counts.get(key, occurrence + 1), scope
            )
        return None

    def readout(self, name: str, module: nn.Module) -> Readout:
        role = _role(module)
        calls = self.calls.get(name, 0)
        if role != "conv":
            return Readout(
                layer=name,
                stage="raw",
                path=(),
                site=ReadSite("module", name, 0, max(calls, 1)),
                kind=role,
                reason="" if calls else "not called by the forward pass",
            )
        count = int(module.out_channels)
        raw = Readout(
            layer=name,
            stage="raw",
            path=(),
            site=ReadSite("module", name, 0, max(calls, 1)),
            channel_count=count,
        )
        if not calls:
            return replace(raw, reason="not called by the forward pass")
        if name in self.failed:
            return replace(raw, reason=self.failed[name])
        if name in self.final:
            trace, node = self.final[name]
            site = self._site(node)
            if site is not None:
                return self._from_trace(name, "activation", trace, site, "")
            lost = "the activation's output could not be located"
        else:
            lost = ""
        stage, candidates = self.fallback.get(name, ("raw", []))
        if not candidates:
            return replace(raw, reason=self.error or "the conv's output was not seen")
        after = self.ended.get(name)
        why = lost or ("no activation follows" + (f"; next: {after}" if after else ""))
        if self.error and not lost:
            why += f"; discovery error: {self.error}"
        if stage == "raw":
            return replace(raw, reason=why)
        # a module's output if one of the equivalent tensors is one (the last: channels
        # first again), else the normalisation function's own output
        found = [(t, n) for t, n in reversed(candidates) if n.modules] + candidates[:1]
        for trace, node in found:
            site = self._site(node)
            if site is not None:
                return self._from_trace(name, "norm", trace, site, why)
        return replace(raw, reason="the normalisation's output could not be located")

    @staticmethod
    def _from_trace(name: str, stage: Stage, trace: _Trace, site: ReadSite, why: str) -> Readout:
        ndim = len(trace.dims)
        restore = tuple(trace.dims.index(i) for i in range(ndim))
        return Readout(
            layer=name,
            stage=stage,
            path=trace.steps,
            site=site,
            channel_offset=trace.offset,
            channel_count=trace.count,
            permute=None if restore == tuple(range(ndim)) else restore,
            reason=why,
        )
