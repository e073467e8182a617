"""The rules of the graph walk: how each kind of operation moves the geometry state.

Global context: an input of a merge that is the same for every position while another input
still depends on position is a global-context path (see ``walker``).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import fx, nn

from cnnviz.analysis.receptive_field.geometry import (
    _G,
    ReceptiveFieldError,
    Table,
    _adaptive,
    _collapse,
    _fixed,
    _hull,
    _normalize,
    _slide,
    _State,
    _tuple,
)
from cnnviz.analysis.receptive_field.ops import (
    _ORDER_KEEPING,
    _ORDER_KEEPING_METHODS,
    _conv_pads,
    _module_desc,
    _node_label,
    _permutation,
    _run_time_window,
)


class _Rules(fx.Interpreter):
    """How each kind of operation transforms the geometry state (the walk's vocabulary).

    The state of every value is read from :attr:`states`: the full states, or, while the
    local states are computed, the local ones layered over them. In local mode :meth:`_merge`
    drops global-context inputs; in full mode it keeps them and notes where they joined.
    """

    def __init__(self, gm: fx.GraphModule, nd: int, tokens: bool) -> None:
        super().__init__(gm)
        self.nd = nd
        self.tokens = tokens
        self.standard = tuple(range(2, 2 + nd))
        self.full: dict[fx.Node, _State | None] = {}
        self.local: dict[fx.Node, _State] = {}  # only where it differs from the full state
        self.states: MutableMapping[fx.Node, _State | None] = self.full  # what the rules read
        self.local_mode = False
        self.joined = False  # the last full-state rule merged a global-context path
        self.shapes: dict[fx.Node, Any] = {}

    # -- helpers -------------------------------------------------------------------------
    def _fail(self, node: fx.Node, why: str) -> ReceptiveFieldError:
        if node.op == "call_module":
            what = f"layer {_module_desc(str(node.target), self.module.get_submodule(node.target))}"
        else:
            target = getattr(node.target, "__name__", str(node.target))
            owner = _node_label(node)
            what = f"operation {target!r} (graph node {owner!r})"
        return ReceptiveFieldError(
            f"`model`: cannot compute receptive fields through {what}: {why}. Supported: "
            "convolutions, pooling, padding, element-wise and channel-wise operations (+, *, "
            "activations, normalisation, dropout, concatenation along channels), flatten."
        )

    def _inputs(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
        return [n for n in found if self.states.get(n) is not None]

    @staticmethod
    def _rank(value: Any) -> int | None:
        return value.dim() if isinstance(value, torch.Tensor) else None

    def _adjusted(
        self, n: fx.Node, s: _State, layout: tuple[int, ...] | None, out_shape: Any
    ) -> list[tuple[_G, ...]]:
        """Groups of input ``n`` per axis as seen by a merge's output (broadcasts collapsed)."""
        shape = self.shapes.get(n)
        adjusted = []
        for a in range(self.nd):
            groups = s.axes[a]
            if (
                layout is not None
                and s.layout is not None
                and out_shape is not None
                and isinstance(shape, tuple)
                and shape[s.layout[a]] == 1
                and out_shape[layout[a]] > 1
            ):
                groups = _collapse(groups, 1)  # broadcast: every unit sees unit 0's region
            adjusted.append(groups)
        return adjusted

    def _merge(self, node: fx.Node, inputs: list[fx.Node], out: Any) -> _State:
        """Union of input states for an element-wise / channel-wise merge (with broadcasting).

        Inputs that are the same for every position, merged with inputs that are not, are
        global-context paths: kept and noted in the full state, dropped in the local one.
        """
        states = [self.states[n] for n in inputs]
        spatial = [s for s in states if not s.is_global]
        layouts = {s.layout for s in spatial}
        if len(layouts) > 1:
            raise self._fail(node, "its inputs index the spatial axes in different dimensions")
        layout = next(iter(layouts)) if layouts else None
        if len(states) == 1:
            return replace(states[0], layout=layout)
        out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        adjusted = [
            self._adjusted(n, s, layout, out_shape) for n, s in zip(inputs, states, strict=True)
        ]
        fixed = [_fixed(adj) for adj in adjusted]
        context_at = frozenset().union(*(s.context_at for s in states))
        if any(fixed) and not all(fixed):
            if self.local_mode:
                keep = [i for i, f in enumerate(fixed) if not f]
                states = [states[i] for i in keep]
                adjusted = [adjusted[i] for i in keep]
                if len(states) == 1:
                    return replace(states[0], layout=layout)
            else:
                self.joined = True
                context_at |= {_node_label(node)}
        signatures = set()
        for adj in adjusted:
            # (jump, 2 * centre offset) of the translating paths: equal means aligned
            signature = frozenset(
                (a, g[0], g[2] - g[1]) for a in range(self.nd) for g in adj[a] if g[0] > 0
            )
            if signature:
                signatures.add(signature)
        misaligned = frozenset().union(*(s.misaligned_at for s in states))
        if len(signatures) > 1:
            misaligned |= {_node_label(node)}
        merged_tables = []
        for a in range(self.nd):
            tables = [s.tables[a] for s in states]
            length = max(len(t) for t in tables)
            merged_tables.append(
                tuple(_hull(t[i] if len(t) > 1 else t[0] for t in tables) for i in range(length))
            )
        return _State(
            axes=tuple(_normalize([g for adj in adjusted for g in adj[a]]) for a in range(self.nd)),
            tables=tuple(merged_tables),
            layout=layout,
            misaligned_at=misaligned,
            exact=all(s.exact for s in states),
            context_at=context_at,
        )

    def _globalize(self, inputs: list[fx.Node]) -> _State:
        axes: list[list[_G]] = [[] for _ in range(self.nd)]
        tables: list[list[Table]] = [[] for _ in range(self.nd)]
        for n in inputs:
            s = self.states[n]
            shape = self.shapes.get(n)
            for a in range(self.nd):
                tables[a].append(s.tables[a])
                if s.is_global or not isinstance(shape, tuple):
                    axes[a].extend(s.axes[a])
                else:
                    axes[a].extend(_collapse(s.axes[a], shape[s.layout[a]]))
        states = [self.states[n] for n in inputs]
        return _State(
            axes=tuple(_normalize(a) for a in axes),
            tables=tuple((_hull(span for t in ts for span in t),) for ts in tables),
            layout=None,
            misaligned_at=frozenset().union(*(s.misaligned_at for s in states)),
            exact=all(s.exact for s in states),
            context_at=frozenset().union(*(s.context_at for s in states)),
        )

    def _window(
        self,
        node: fx.Node,
        state: _State,
        out: Any,
        kernel: Sequence[int],
        stride: Sequence[int],
        pad: Sequence[int],
        dilation: Sequence[int] | None = None,
        *,
        exact: bool = True,
        mode: str = "zeros",
        adaptive: bool = False,
    ) -> _State:
        """Sliding window per axis: ``kernel`` taps ``dilation`` apart, ``stride``, left pad."""
        if state.is_global:
            return state
        if isinstance(out, (tuple, list)):
            out = out[0]
        self._check_standard(node, state, out)
        slid = _slide(state, out.shape[2:], kernel, stride, pad, dilation, mode, adaptive)
        return replace(slid, exact=state.exact and exact)

    def _check_standard(self, node: fx.Node, state: _State, out: Any) -> None:
        if state.layout != self.standard or self._rank(out) != 2 + self.nd:
            raise self._fail(
                node,
                f"it expects (N, C, {'H, W' if self.nd == 2 else 'L'}) input with the spatial "
                "axes last",
            )

    def _conv_like(
        self,
        node: fx.Node,
        state: _State,
        out: Any,
        weight_shape: Sequence[int],
        stride: Any,
        padding: Any,
        dilation: Any,
        mode: str = "zeros",
    ) -> _State:
        nd = self.nd
        k = tuple(weight_shape[2:])
        if len(k) != nd:
            raise self._fail(node, f"a {len(k)}-D convolution on {nd}-D input")
        d = _tuple(dilation, nd)
        return self._window(
            node, state, out, k, _tuple(stride, nd), _conv_pads(padding, d, k), d,
            exact=mode != "circular", mode=mode,
        )  # fmt: skip

    def _pool(
        self, node: fx.Node, kind: str, state: _State, in_shape: Any, out: Any, opts: Mapping
    ) -> _State:
        nd = self.nd
        value = out[0] if isinstance(out, (tuple, list)) else out
        if kind == "adaptive":
            if state.is_global:
                return state
            if not isinstance(in_shape, tuple) or self._rank(value) != 2 + nd:
                raise self._fail(node, "unexpected input/output shapes for adaptive pooling")
            triples = [_adaptive(in_shape[2 + a], value.shape[2 + a]) for a in range(nd)]
            return self._window(
                node, state, value, [t[0] for t in triples], [t[1] for t in triples], [0] * nd,
                exact=all(t[2] for t in triples), adaptive=True,
            )  # fmt: skip
        k = _tuple(opts["kernel_size"], nd)
        stride = opts.get("stride")
        s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else stride
        p = _tuple(opts.get("padding", 0), nd)
        d = _tuple(opts.get("dilation", 1), nd)
        return self._window(node, state, value, k, _tuple(s, nd), p, d)

    def _dynamic_same(
        self, node: fx.Node, m: nn.Module, state: _State, in_shape: Any, out: Any
    ) -> _State:
        """A conv/pool subclass that pads at run time (timm's ``*Same`` layers)."""
        if state.is_global:
            return state
        self._check_standard(node, state, out)
        k, s, pads, d, mode = _run_time_window(m, in_shape[2:], out.shape[2:])
        return self._window(node, state, out, k, s, pads, d, exact=mode != "circular", mode=mode)

    def _pad(
        self, node: fx.Node, state: _State, out: Any, pad: Sequence[int], mode: str = "zeros"
    ) -> _State:
        if state.is_global:
            return state
        nd = self.nd
        lefts = []
        for a in range(nd):
            i = 2 * (nd - 1 - a)
            lefts.append(int(pad[i]) if i < len(pad) else 0)
        return self._window(
            node, state, out, [1] * nd, [1] * nd, lefts, exact=mode != "circular", mode=mode
        )

    def _spread(self, node: fx.Node, state: _State, in_shape: Any, out: Any) -> _State:
        """Resampling a map that is 1 wide on every spatial axis: a broadcast, nothing else."""
        if state.is_global:
            return state
        if (
            state.layout != self.standard
            or not isinstance(in_shape, tuple)
            or any(in_shape[d] != 1 for d in state.layout)
        ):
            raise self._fail(node, "resampling changes the spatial geometry")
        return replace(state, axes=tuple(_collapse(g, 1) for g in state.axes))

    def _transpose(self, node: fx.Node, state: _State, rank: int | None) -> _State:
        if state.is_global:
            return state
        if rank is None:
            raise self._fail(node, "not applied to a tensor")
        name = getattr(node.target, "__name__", str(node.target))
        perm = _permutation(name, list(node.args[1:]), dict(node.kwargs), rank)
        where = {old: new for new, old in enumerate(perm)}
        return replace(state, layout=tuple(where[d] for d in state.layout))

    def _dim_arg(self, node: fx.Node, pos: int, default: Any = 0) -> Any:
        if len(node.args) > pos:
            return node.args[pos]
        return node.kwargs.get("dim", node.kwargs.get("axis", default))

    def _channel_op(
        self, node: fx.Node, inputs: list[fx.Node], dim: Any, rank: int | None, out: Any
    ) -> _State:
        spatial = [self.states[n] for n in inputs if not self.states[n].is_global]
        if rank is not None and isinstance(dim, int) and spatial:
            d = dim % rank
            if any(d in s.layout for s in spatial):
                raise self._fail(node, f"it works along dimension {dim}, a spatial axis")
        return self._merge(node, inputs, out)

    def _reshape(self, node: fx.Node, inputs: list[fx.Node], out: Any) -> _State:
        """Reshapes and reductions: unchanged spatial dims pass, anything else globalizes."""
        state = self.states[inputs[0]]
        in_shape = self.shapes.get(inputs[0])
        if state.is_global or not isinstance(out, torch.Tensor) or not isinstance(in_shape, tuple):
            return self._globalize(inputs)
        if out.dim() == len(in_shape) and all(out.shape[d] == in_shape[d] for d in state.layout):
            spatial_same = True
            if node.op == "call_method" and node.target in ("view", "reshape"):
                spatial_same = tuple(out.shape) == in_shape or all(
                    out.shape[d:] == torch.Size(in_shape[d:]) for d in state.layout[:1]
                )
            if spatial_same:
                return self._merge(node, inputs, out)
        # A reshape of the leading dims only (a channel shuffle's view to (N, g, C/g, H, W)):
        # in row-major order the trailing spatial block is untouched, so it keeps its place.
        nd, rank = self.nd, len(in_shape)
        order_keeping = (
            node.target in _ORDER_KEEPING_METHODS
            if node.op == "call_method"
            else node.target in _ORDER_KEEPING
            or isinstance(self._module_of(node), (nn.Flatten, nn.Unflatten))
        )
        if (
            order_keeping
            and state.layout == tuple(range(rank - nd, rank))
            and out.dim() >= nd + 2
            and out.shape[0] == in_shape[0]
            and tuple(out.shape[-nd:]) == in_shape[-nd:]
        ):
            layout = tuple(range(out.dim() - nd, out.dim()))
            return replace(self._merge(node, inputs, out), layout=layout)
        return self._globalize(inputs)

    def _module_of(self, node: fx.Node) -> nn.Module | None:
        return self.module.get_submodule(str(node.target)) if node.op == "call_module" else None

    def _all_global(self, inputs: list[fx.Node]) -> bool:
        return all(self.states[n].is_global for n in inputs)

    def _unknown(self, node: fx.Node, inputs: list[fx.Node], out: Any) -> _State:
        if self._all_global(inputs):
            return self._globalize(inputs)
        if isinstance(out, torch.Tensor) and out.dim() < 2 + self.nd and not self.tokens:
            return self._globalize(inputs)
        raise self._fail(node, "its effect on spatial positions is unknown")

    def _getitem(
        self, node: fx.Node, inputs: list[fx.Node], state: _State, in_shape: Any, out: Any
    ) -> _State:
        if isinstance(in_shape, list):  # item of a tuple/list (split, chunk, return_indices)
            return state
        if state.is_global:
            return state
        index = node.args[1]
        items = index if isinstance(index, tuple) else (index,)
        full = slice(None)
        batch_channel_only = (
            Ellipsis not in items
            and all(isinstance(it, slice) and it == full for it in items[2:])
            and all(isinstance(it, slice) for it in items[:2])
        )
        if batch_channel_only:
            return self._merge(node, inputs, out)
        raise self._fail(node, "indexing along a spatial axis")
