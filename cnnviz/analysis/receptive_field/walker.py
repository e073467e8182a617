"""The graph walk: propagate the geometry state through a traced model, node by node.

Every value gets two states: the *full* one (all paths) and, where they differ, the *local*
one, in which global-context paths are cut. A global-context path is an input of a merge
(``*``, ``+``, ``torch.where``...) that is the same for every position (a global pool, a mean
over the spatial axes, a 1x1 map broadcast or interpolated back) while another input of the same
merge still depends on position: the gate of a squeeze-and-excitation block. The full state
keeps it (every later unit then sees the whole input); the local state drops it.
"""

from __future__ import annotations

import operator
from collections import ChainMap
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from cnnviz.analysis.layers import CONV_TYPES, POOL_TYPES
from cnnviz.analysis.receptive_field.geometry import ReceptiveFieldError, _State
from cnnviz.analysis.receptive_field.ops import (
    _ADAPTIVE_MODULES,
    _BASE_FORWARDS,
    _CAT,
    _FUNC_CONVS,
    _FUNC_POOLS,
    _PAD_MODULES,
    _PASS_FUNCTIONS,
    _PASS_METHODS,
    _PASS_MODULES,
    _RESHAPE,
    _RESHAPE_METHODS,
    _SOFTMAX_MODULES,
    _SPLIT,
    _SPLIT_METHODS,
    _TRANSPOSE,
    _TRANSPOSE_METHODS,
    _UPSAMPLE_FUNCS,
    _UPSAMPLE_MODULES,
    _pad_mode,
)
from cnnviz.analysis.receptive_field.rules import _Rules

# A recorded layer: the module, its full and local states, its output shape without batch.
Record = tuple[nn.Module, _State, _State, tuple[int, ...]]


class _Walker(_Rules):
    """Runs the traced graph once (for shapes) and propagates the geometry state node by node."""

    def __init__(self, gm: fx.GraphModule, nd: int, tokens: bool) -> None:
        super().__init__(gm, nd, tokens)
        self.records: dict[str, Record] = {}

    # -- the per-node rule ---------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n] = (
            tuple(out.shape)
            if isinstance(out, torch.Tensor)
            else [tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in out]
            if isinstance(out, (tuple, list))
            else None
        )
        self.joined = False
        full = self.full[n] = self._state(n, out)
        local = full
        if full is not None and (self.joined or any(i in self.local for i in n.all_input_nodes)):
            self.states, self.local_mode = ChainMap(self.local, self.full), True
            try:
                local = self._state(n, out)
            finally:
                self.states, self.local_mode = self.full, False
            if local is not None:
                local = replace(local, context_at=frozenset())
                if local != full:
                    self.local[n] = local
        module = self._module_of(n)
        if (
            isinstance(module, CONV_TYPES + POOL_TYPES)
            and full is not None
            and local is not None
            and isinstance(out, torch.Tensor)
            and str(n.target) not in self.records
        ):
            self.records[str(n.target)] = (module, full, local, tuple(out.shape[1:]))
        return out

    def _state(self, node: fx.Node, out: Any) -> _State | None:
        nd = self.nd
        if node.op == "placeholder":
            if not isinstance(out, torch.Tensor):
                return None
            layout = (1,) if self.tokens else self.standard
            spatial = out.shape[1:] if self.tokens else out.shape[2:]
            if len(spatial) != nd:
                raise ReceptiveFieldError(
                    f"`input_size`: unexpected input shape {tuple(out.shape)}"
                )
            axes = tuple(((1, 0, 0),) for _ in spatial)
            tables = tuple(tuple((j, j + 1) for j in range(n)) for n in spatial)
            return _State(axes=axes, tables=tables, layout=layout)
        if node.op in ("output", "get_attr"):
            return None
        inputs = self._inputs(node)
        if not inputs:
            return None
        first = inputs[0]
        state = self.states[first]
        in_shape = self.shapes.get(first)
        if not isinstance(out, (torch.Tensor, tuple, list)):
            return None
        if isinstance(out, (tuple, list)) and not any(isinstance(v, torch.Tensor) for v in out):
            return None
        if node.op == "call_module":
            module = self.module.get_submodule(str(node.target))
            return self._module_state(node, module, inputs, state, in_shape, out)
        if node.op == "call_function":
            return self._function_state(node, inputs, state, in_shape, out)
        if node.op == "call_method":
            return self._method_state(node, inputs, state, in_shape, out)
        return None

    def _module_state(
        self,
        node: fx.Node,
        m: nn.Module,
        inputs: list[fx.Node],
        state: _State,
        in_shape: Any,
        out: Any,
    ) -> _State:
        if (
            isinstance(m, CONV_TYPES + POOL_TYPES)
            and type(m).forward not in _BASE_FORWARDS
            and not isinstance(m, _ADAPTIVE_MODULES)
        ):
            return self._dynamic_same(node, m, state, in_shape, out)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return self._conv_like(
                node, state, out, m.weight.shape, m.stride, m.padding, m.dilation,
                mode=m.padding_mode,
            )  # fmt: skip
        if isinstance(m, _ADAPTIVE_MODULES):
            return self._pool(node, "adaptive", state, in_shape, out, {})
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            return self._pool(node, "max", state, in_shape, out, vars(m))
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.LPPool1d, nn.LPPool2d)):
            return self._pool(node, "avg", state, in_shape, out, vars(m))
        if isinstance(m, _PAD_MODULES):
            return self._pad(node, state, out, m.padding, _pad_mode(m))
        if isinstance(m, _PASS_MODULES):
            return self._merge(node, inputs, out)
        if isinstance(m, _SOFTMAX_MODULES):
            dim = m.dim
            rank = self._rank(out)
            return self._channel_op(node, inputs, dim if dim is not None else 1, rank, out)
        if isinstance(m, nn.Embedding):
            if not state.is_global and state.layout != (1,):
                raise self._fail(node, "an embedding of an already spatial tensor")
            return self._merge(node, inputs, out)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self._reshape(node, inputs, out)
        if isinstance(m, _UPSAMPLE_MODULES):
            return self._spread(node, state, in_shape, out)
        if isinstance(m, (nn.Linear, nn.Bilinear, nn.LazyLinear)):
            if self._all_global(inputs):
                return self._globalize(inputs)
            rank = self._rank(out)
            spatial = [self.states[n] for n in inputs if not self.states[n].is_global]
            if rank is not None and any((rank - 1) in s.layout for s in spatial):
                raise self._fail(node, "it mixes the last dimension, which is a spatial axis")
            return self._merge(node, inputs, out)
        if self._all_global(inputs):
            return self._globalize(inputs)
        raise self._fail(node, "its effect on spatial positions is unknown")

    def _function_state(
        self, node: fx.Node, inputs: list[fx.Node], state: _State, in_shape: Any, out: Any
    ) -> _State:
        fn = node.target
        rank = len(in_shape) if isinstance(in_shape, tuple) else None
        if fn in _FUNC_CONVS:
            names = ("input", *_FUNC_CONVS[fn])
            opts = {**dict(zip(names, node.args, strict=False)), **node.kwargs}
            weight = opts["weight"]
            wshape = self.shapes.get(weight) if isinstance(weight, fx.Node) else None
            if not isinstance(wshape, tuple):
                raise self._fail(node, "its weight's shape is unknown")
            return self._conv_like(
                node, state, out, wshape, opts.get("stride", 1), opts.get("padding", 0),
                opts.get("dilation", 1),
            )  # fmt: skip
        if fn in _FUNC_POOLS:
            kind, names = _FUNC_POOLS[fn]
            opts = {**dict(zip(("input", *names), node.args, strict=False)), **node.kwargs}
            return self._pool(node, kind, state, in_shape, out, opts)
        if fn is F.pad:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            mode = "zeros" if mode == "constant" else mode
            return self._pad(node, state, out, pad, mode)
        if fn in _PASS_FUNCTIONS:
            return self._merge(node, inputs, out)
        if fn in (F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax):
            return self._channel_op(node, inputs, self._dim_arg(node, 1, 1), rank, out)
        if fn in _CAT:
            cat_rank = len(self.shapes[inputs[0]]) if isinstance(in_shape, tuple) else None
            return self._channel_op(node, inputs, self._dim_arg(node, 1, 0), cat_rank, out)
        if fn in _SPLIT:
            dim_pos = 2 if fn in (torch.split, torch.chunk, torch.tensor_split) else 1
            return self._channel_op(node, inputs, self._dim_arg(node, dim_pos, 0), rank, out)
        if fn is operator.getitem:
            return self._getitem(node, inputs, state, in_shape, out)
        if fn in _TRANSPOSE:
            return self._transpose(node, state, rank)
        if fn in _RESHAPE:
            return self._reshape(node, inputs, out)
        if fn in _UPSAMPLE_FUNCS:
            return self._spread(node, state, in_shape, out)
        if fn in (F.linear, torch.matmul, operator.matmul):
            if self._all_global(inputs):
                return self._globalize(inputs)
            raise self._fail(node, "a matrix product over a spatial tensor")
        return self._unknown(node, inputs, out)

    def _method_state(
        self, node: fx.Node, inputs: list[fx.Node], state: _State, in_shape: Any, out: Any
    ) -> _State:
        name = str(node.target)
        rank = len(in_shape) if isinstance(in_shape, tuple) else None
        if name in _PASS_METHODS:
            return self._merge(node, inputs, out)
        if name in _TRANSPOSE_METHODS:
            return self._transpose(node, state, rank)
        if name in _SPLIT_METHODS:
            dim_pos = 2 if name in ("split", "chunk", "tensor_split") else 1
            return self._channel_op(node, inputs, self._dim_arg(node, dim_pos, 0), rank, out)
        if name in ("softmax", "log_softmax"):
            return self._channel_op(node, inputs, self._dim_arg(node, 1, 1), rank, out)
        if name in _RESHAPE_METHODS:
            return self._reshape(node, inputs, out)
        if name in ("view_as", "reshape_as", "expand_as") and inputs[0] is node.args[0]:
            # the other tensor only lends its shape
            if name != "expand_as":
                return self._reshape(node, inputs[:1], out)
            if isinstance(in_shape, tuple) and tuple(out.shape) != in_shape:
                return self._spread(node, state, in_shape, out)
            return self._merge(node, inputs[:1], out)
        return self._unknown(node, inputs, out)
