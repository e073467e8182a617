"""Share of conv layers read after their activation, on torchvision, timm and case-study models.

For every model of the zoo (random weights, small inputs, no network) this prints:

- ``convs``: conv layers (``nn.Conv1d``/``nn.Conv2d``) called by the forward pass;
- ``act follows``: convs whose output reaches an activation through normalisation,
  dropout/identity, permutations, one residual add and channel concatenation, according to an
  *independent* reference: the ``torch.export`` graph of the model, walked node by node;
- ``read post-act``: convs that :func:`cnnviz.analysis.readout.find_readouts` reads after an
  activation (module hooks and a function mode during one eager forward pass);
- ``share``: read post-act / act follows (must be 100%);
- ``norm``: convs with no activation after them, read after their normalisation;
- ``values ok``: of the convs read post-activation or post-norm, how many read tensors equal
  the tensor the exported graph computes at that node (channel slice and permutation
  included); the graph's stage (activation / norm / raw) must also agree for every conv;
- ``before``: convs the old ``activation_after`` (same ``nn.Sequential`` only) found.

Usage::

    python scripts/readout_share.py            # the whole zoo
    python scripts/readout_share.py densenet121 resnet18   # models whose name contains these

The zoo (:data:`ZOO`), the graph reference (:func:`graph_reference`) and :func:`measure` are
also used by ``tests/analysis/test_readout.py``.
"""

from __future__ import annotations

import operator
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from cnnviz.analysis.guard import observe
from cnnviz.analysis.layers import CONV_TYPES, activation_after
from cnnviz.analysis.readout import Readout, ReadoutHooks, find_readouts


# ----------------------------------------------------------------------------------- the zoo
@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


def _tv(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None, num_classes=10, **kwargs)

    return build


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10)

    return build


def _case(name: str, size: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from cnnviz.models import create

        return create(name, num_classes=10, input_size=size)

    return build


ZOO: tuple[ZooModel, ...] = (
    ZooModel("tv/resnet18", _tv("resnet18"), (3, 32, 32)),
    ZooModel("tv/mobilenet_v3_small", _tv("mobilenet_v3_small"), (3, 32, 32)),
    ZooModel("tv/efficientnet_b0", _tv("efficientnet_b0"), (3, 32, 32)),
    ZooModel("tv/convnext_tiny", _tv("convnext_tiny"), (3, 32, 32)),
    ZooModel("tv/regnet_x_400mf", _tv("regnet_x_400mf"), (3, 32, 32)),
    ZooModel("tv/densenet121", _tv("densenet121"), (3, 32, 32)),
    ZooModel("tv/shufflenet_v2_x0_5", _tv("shufflenet_v2_x0_5"), (3, 32, 32)),
    ZooModel("tv/squeezenet1_0", _tv("squeezenet1_0"), (3, 64, 64)),
    ZooModel("tv/googlenet", _tv("googlenet", aux_logits=False, init_weights=False), (3, 32, 32)),
    ZooModel("timm/resnet18", _timm("resnet18"), (3, 32, 32)),
    ZooModel("timm/efficientnet_b0", _timm("efficientnet_b0"), (3, 32, 32)),
    ZooModel("timm/convnext_atto", _timm("convnext_atto"), (3, 32, 32)),
    ZooModel("timm/regnetx_002", _timm("regnetx_002"), (3, 32, 32)),
    ZooModel("timm/mobilenetv3_small_100", _timm("mobilenetv3_small_100"), (3, 32, 32)),
    ZooModel("cnnviz/resnet18", _case("resnet18", 32), (3, 32, 32)),
    ZooModel("cnnviz/googlenet", _case("googlenet", 32), (3, 32, 32)),
)


def example_input(entry: ZooModel, n: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded random batch for ``entry``."""
    return torch.randn(n, *entry.input_shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------- the graph reference
# aten operator names (overload packet names) of the exported graph.
_ACT = {
    "relu",
    "relu6",
    "hardtanh",
    "leaky_relu",
    "prelu",
    "_prelu_kernel",
    "rrelu",
    "rrelu_with_noise",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "hardswish",
    "hardsigmoid",
    "softplus",
    "tanh",
    "sigmoid",
    "softsign",
    "log_sigmoid",
    "threshold",
}
_ACT |= {f"{a}_" for a in _ACT}
_NORM = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"}
_PASS = {"dropout", "dropout_", "feature_dropout", "alpha_dropout", "clone", "contiguous"}
_PASS |= {"alias", "detach", "_to_copy", "to", "lift_fresh_copy"}


def _opname(node: torch.fx.Node) -> str:
    target = node.target
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "_overloadpacket", None)
    return getattr(packet, "__name__", str(target)).split(".")[-1]


def _shape(node: object) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


@dataclass
class GraphReadout:
    """What the exported graph says about one conv."""

    layer: str
    stage: str = "raw"
    node: str | None = None
    offset: int = 0
    count: int = 0
    dims: tuple[int, ...] = ()
    value: torch.Tensor | None = field(default=None, repr=False)


def graph_reference(model: nn.Module, x: torch.Tensor) -> dict[str, GraphReadout]:
    """Export ``model`` and find, per conv, the first activation its output reaches.

    Walks the ``torch.export`` graph (eval mode) from each conv node through normalisation,
    dropout/clone/alias, permute/transpose, one residual ``add`` (same shapes) and ``cat``
    along the channel axis (tracking the channel offset); the earliest activation node reached
    (graph order = execution order) is the conv's activation. The graph is then run by an
    ``fx.Interpreter`` to record that node's value, sliced to the conv's channels.
    """
    with observe(model), torch.no_grad():
        program = torch.export.export(model, (x,), strict=False)
    graph = program.graph
    order = {node: i for i, node in enumerate(graph.nodes)}
    params = program.graph_signature.inputs_to_parameters
    found: dict[str, GraphReadout] = {}
    wanted: dict[torch.fx.Node, list[GraphReadout]] = {}
    for node in graph.nodes:
        if node.op != "call_function" or _opname(node) not in ("conv1d", "conv2d", "convolution"):
            continue
        weight = node.args[1]
        name = params.get(getattr(weight, "name", ""), "").removesuffix(".weight")
        if not name or name in found:
            continue
        shape = _shape(node)
        result = GraphReadout(name, count=shape[1] if shape else 0)
        found[name] = result
        best: tuple[int, torch.fx.Node, int, tuple[int, ...]] | None = None
        norms: list[tuple[torch.fx.Node, torch.fx.Node, int, tuple[int, ...]]] = []
        stack: list[tuple[torch.fx.Node, int, tuple[int, ...], bool, torch.fx.Node | None]]
        stack = [(node, 0, tuple(range(len(shape or ()))), False, None)]
        seen: set[tuple[torch.fx.Node, int, bool, torch.fx.Node | None]] = set()
        while stack:
            current, offset, dims, residual, anchor = stack.pop()
            if (current, offset, residual, anchor) in seen:
                continue
            seen.add((current, offset, residual, anchor))
            for user in current.users:
                if user.op != "call_function":
                    continue
                op = _opname(user)
                first = user.args[0] if user.args else None
                if op in _ACT and first is current:
                    if best is None or order[user] < best[0]:
                        best = (order[user], user, offset, dims)
                elif op in _NORM and first is current:
                    if not residual:
                        norms.append((user, anchor or user, offset, dims))
                    stack.append((user, offset, dims, residual, anchor or user))
                elif op in _PASS and first is current:
                    stack.append((user, offset, dims, residual, anchor))
                elif op in ("permute", "transpose") and first is current:
                    if op == "permute":
                        perm = [int(d) % len(dims) for d in user.args[1]]
                    else:
                        a, b = (int(d) % len(dims) for d in user.args[1:3])
                        perm = list(range(len(dims)))
                        perm[a], perm[b] = perm[b], perm[a]
                    stack.append((user, offset, tuple(dims[p] for p in perm), residual, anchor))
                elif op in ("view", "reshape") and _shape(user) == _shape(current):
                    stack.append((user, offset, dims, residual, anchor))
                elif op in ("add", "add_") and not residual and len(user.args) >= 2:
                    a, b = user.args[:2]
                    same = _shape(a) is not None and _shape(a) == _shape(b) == _shape(user)
                    if same and user.kwargs.get("alpha", 1) == 1:
                        stack.append((user, offset, dims, True, anchor))
                elif op == "cat" and first is not None and current in first:
                    dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
                    dim %= len(dims)
                    if dims.index(1) != dim:
                        continue
                    start = 0
                    for item in first:
                        if item is current:
                            break
                        start += (_shape(item) or (0,) * (dim + 1))[dim]
                    stack.append((user, offset + start, dims, residual, anchor))
        if best is None and norms:  # no activation: the last norm on the first norm's path
            first_anchor = min((a for _, a, _, _ in norms), key=order.__getitem__)
            last = max((e for e in norms if e[1] is first_anchor), key=lambda e: order[e[0]])
            best = (order[last[0]], last[0], last[2], last[3])
            result.stage = "norm"
        elif best is not None:
            result.stage = "activation"
        if best is not None:
            _, target, offset, dims = best
            result.node, result.offset, result.dims = target.name, offset, dims
            wanted.setdefault(target, []).append(result)
    _record_values(program, x, wanted)
    return found


def _record_values(
    program: torch.export.ExportedProgram,
    x: torch.Tensor,
    wanted: dict[torch.fx.Node, list[GraphReadout]],
) -> None:
    from torch.export.graph_signature import InputKind

    args = []
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            args.append(x)
        elif spec.target in program.state_dict:
            args.append(program.state_dict[spec.target])
        else:
            args.append(program.constants[spec.target])

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> object:
            out = super().run_node(n)
            for result in wanted.get(n, ()):
                t = out.permute([result.dims.index(i) for i in range(len(result.dims))])
                result.value = t.narrow(1, result.offset, result.count).clone()
            return out

    with torch.no_grad():
        Recorder(program.graph_module).run(*args)


# ----------------------------------------------------------------------------- measuring
@dataclass
class Measure:
    """One row of the table."""

    name: str
    convs: int
    follows: int
    read_post: int
    post_where_follows: int
    norm: int
    values_ok: int
    before: int
    seconds: float
    mismatches: list[str]
    readouts: dict[str, Readout] = field(repr=False, default_factory=dict)

    @property
    def share(self) -> float:
        return self.post_where_follows / self.follows if self.follows else 1.0


def read_tensors(
    model: nn.Module, x: torch.Tensor, readouts: dict[str, Readout]
) -> dict[str, torch.Tensor]:
    """Run ``x`` once and return each layer's read tensor (first call), cloned."""
    seen: dict[str, torch.Tensor] = {}
    with (
        observe(model),
        torch.no_grad(),
        ReadoutHooks(model, readouts, lambda n, t: seen.setdefault(n, t.clone())),
    ):
        model(x)
    return seen


def measure(model: nn.Module, x: torch.Tensor, name: str = "") -> Measure:
    """Compare :func:`find_readouts` with :func:`graph_reference` on one model."""
    start = time.perf_counter()
    convs = [n for n, m in model.named_modules() if isinstance(m, CONV_TYPES)]
    readouts = {k: r for k, r in find_readouts(model, x, convs).items() if r.site.calls > 0}
    seconds = time.perf_counter() - start
    reference = graph_reference(model, x)
    called = [n for n in convs if n in reference]
    tensors = read_tensors(model, x, {n: readouts[n] for n in called})
    follows = [n for n in called if reference[n].stage == "activation"]
    post = [n for n in called if readouts[n].post_activation]
    mismatches = [
        f"{n}: the graph says {reference[n].stage}, the readout is {readouts[n].stage} "
        f"({readouts[n].describe()})"
        for n in called
        if reference[n].stage != readouts[n].stage
    ]
    ok = 0
    for n in called:
        if readouts[n].stage == "raw" or reference[n].stage != readouts[n].stage:
            continue
        want, got = reference[n].value, tensors.get(n)
        if (
            want is not None
            and got is not None
            and got.shape == want.shape
            and torch.allclose(got, want, rtol=1e-4, atol=1e-5)
        ):
            ok += 1
        else:
            mismatches.append(f"{n}: the read tensor differs from graph node {reference[n].node}")
    before = sum(1 for n in called if activation_after(model, n) is not None)
    return Measure(
        name=name or type(model).__name__,
        convs=len(called),
        follows=len(follows),
        read_post=len(post),
        post_where_follows=len(set(follows) & set(post)),
        norm=sum(1 for n in called if readouts[n].stage == "norm"),
        values_ok=ok,
        before=before,
        seconds=seconds,
        mismatches=mismatches,
        readouts=readouts,
    )


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    chosen = [z for z in ZOO if not argv or any(a in z.name for a in argv)]
    header = (
        f"{'model':28s} {'convs':>5s} {'act follows':>11s} {'read post-act':>13s} "
        f"{'share':>7s} {'norm':>4s} {'values ok':>9s} {'before':>6s} {'find s':>6s}"
    )
    print(header)
    print("-" * len(header))
    bad = 0
    total_follows = total_post = 0
    for entry in chosen:
        torch.manual_seed(0)
        model = entry.build().eval()
        m = measure(model, example_input(entry), entry.name)
        total_follows += m.follows
        total_post += m.post_where_follows
        print(
            f"{m.name:28s} {m.convs:5d} {m.follows:11d} {m.read_post:13d} "
            f"{m.share:7.1%} {m.norm:4d} {m.values_ok:>4d}/{m.read_post + m.norm:<4d} "
            f"{m.before:6d} {m.seconds:6.2f}"
        )
        for line in m.mismatches:
            bad += 1
            print(f"    MISMATCH {line}")
    share = total_post / total_follows if total_follows else 1.0
    print("-" * len(header))
    print(f"{'all':28s} {'':5s} {total_follows:11d} {total_post:13d} {share:7.1%}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
