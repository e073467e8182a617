"""How to feed a model and read its class scores — as users have them.

A user's ``LightningModule`` may take a tensor or the whole batch (a dict, a tuple), and return
logits, a tuple ``(logits, extras)`` or a dict ``{"logits": ...}``. cnnviz needs two things from
it: the model *input* inside a batch (to show it, perturb it, cast it) and the *class scores*
inside an output (for attributions and predictions). :func:`resolve_io` finds both once, from one
guarded forward of the probe batch, and returns a :class:`ModelIO` that every analysis shares.

The common cases are found automatically:

- input: a tensor batch; the first tensor of a tuple/list batch; in a dict batch the first of
  ``x``, ``input``, ``inputs``, ``image``, ``images``, ``img``, ``pixel_values``, ``input_ids``,
  ``tokens``, ``text``, ``data``;
- scores: a 2-D output tensor; the first 2-D tensor of a tuple/list output; in a dict output the
  first of ``logits``, ``scores``, ``y_hat``, ``logit``, ``out``, ``output``, ``outputs``,
  ``pred``, ``preds``, ``prediction``, ``predictions``.

Otherwise say how: ``probe_input=`` and ``scores=`` take a dict key (``"image"``), a tuple index
(``0``) or a function (``lambda batch: batch["pixels"]``, ``lambda out: out.logits``).

Example:
    >>> io = resolve_io(model, {"image": x, "label": y})
    >>> io.call, io.input_path, io.input_kind
    ('batch', ('image',), 'image')
    >>> scores = io.scores_of(io.forward(model, io.batch_with(batch, x)))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "INPUT_KEYS",
    "LABEL_KEYS",
    "SCORE_KEYS",
    "InputKind",
    "ModelIO",
    "ModelIOError",
    "Spec",
    "cast_input",
    "find_input",
    "find_labels",
    "find_scores",
    "input_kind",
    "model_dtype",
    "replace_at",
    "resolve_io",
    "scoped",
]

#: How to find something inside a batch or an output: a dict key, a sequence index or a function.
Spec = str | int | Callable[[Any], Any] | None
InputKind = Literal["image", "sequence", "tokens", "other"]

INPUT_KEYS: tuple[str, ...] = (
    "x",
    "input",
    "inputs",
    "image",
    "images",
    "img",
    "pixel_values",
    "input_ids",
    "tokens",
    "text",
    "data",
)
LABEL_KEYS: tuple[str, ...] = ("y", "label", "labels", "target", "targets", "class", "cls")
SCORE_KEYS: tuple[str, ...] = (
    "logits",
    "scores",
    "y_hat",
    "logit",
    "out",
    "output",
    "outputs",
    "pred",
    "preds",
    "prediction",
    "predictions",
)

Path = tuple[str | int, ...]


class ModelIOError(ValueError):
    """The model's input or class scores cannot be found; the message names the fix."""


def _describe(value: Any, depth: int = 0) -> str:
    """A short structural description of a batch or output for error messages."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}:{str(value.dtype).replace('torch.', '')}"
    if depth > 1:
        return type(value).__name__
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k!r}: {_describe(v, depth + 1)}" for k, v in list(value.items())[:8])
        return "{" + inner + "}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v, depth + 1) for v in list(value)[:8])
        return ("(" + inner + ")") if isinstance(value, tuple) else ("[" + inner + "]")
    return type(value).__name__


def _get(value: Any, key: str | int) -> Any:
    if isinstance(value, Mapping):
        return value[key]
    if isinstance(key, int) and isinstance(value, Sequence) and not isinstance(value, str):
        return value[key]
    return getattr(value, str(key))


def _lookup(value: Any, spec: Spec, what: str, argument: str) -> tuple[Any, Path | None]:
    """Apply an explicit ``spec`` (key, index or function) to ``value``."""
    if callable(spec):
        try:
            return spec(value), None
        except Exception as err:
            raise ModelIOError(
                f"`{argument}`: the function raised {type(err).__name__}: {err} on the {what} "
                f"{_describe(value)}"
            ) from err
    try:
        return _get(value, spec), (spec,)  # type: ignore[arg-type]
    except (KeyError, IndexError, AttributeError, TypeError):
        raise ModelIOError(
            f"`{argument}`={spec!r} does not exist in the {what} {_describe(value)}; pass a key, "
            "an index or a function that returns the tensor"
        ) from None


def find_input(batch: Any, spec: Spec = None) -> tuple[torch.Tensor, Path | None]:
    """The model input inside ``batch`` and where it was found.

    Args:
        batch: A tensor, a tuple/list whose first tensor is the input, or a dict.
        spec: ``None`` (find it), a dict key, a sequence index or a function of the batch.

    Returns:
        ``(input, path)``; ``path`` is the key/index chain (``()`` for a tensor batch), or
        ``None`` when a function found it (then it cannot be replaced inside the batch).

    Raises:
        ModelIOError: If no input tensor is found; the message shows the batch's structure and
            names ``probe_input=``.
    """
    if spec is not None:
        value, path = _lookup(batch, spec, "batch", "probe_input")
        if not isinstance(value, torch.Tensor):
            raise ModelIOError(
                f"`probe_input` gave a {type(value).__name__}, not a tensor, for the batch "
                f"{_describe(batch)}"
            )
        return value, path
    if isinstance(batch, torch.Tensor):
        return batch, ()
    if isinstance(batch, (tuple, list)):
        for i, item in enumerate(batch):
            if isinstance(item, torch.Tensor):
                return item, (i,)
            if isinstance(item, Mapping):
                try:
                    value, path = find_input(item)
                except ModelIOError:
                    continue
                return value, (i, *(path or ()))
    if isinstance(batch, Mapping):
        for key in INPUT_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key], (key,)
        tensors = [k for k, v in batch.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return batch[tensors[0]], (tensors[0],)
    raise ModelIOError(
        f"cannot tell the model input in the batch {_describe(batch)}; pass "
        "`probe_input=` (a key such as 'image', an index, or a function of the batch)"
    )


def find_labels(batch: Any, input_path: Path | None) -> torch.Tensor | None:
    """Class labels in ``batch`` (the tensor after the input of a tuple, or a label key)."""
    if isinstance(batch, (tuple, list)) and input_path and isinstance(input_path[0], int):
        for item in batch[input_path[0] + 1 :]:
            if isinstance(item, torch.Tensor) and item.dim() == 1 and not item.is_floating_point():
                return item
        return None
    if isinstance(batch, Mapping):
        for key in LABEL_KEYS:
            value = batch.get(key)
            if isinstance(value, torch.Tensor) and value.dim() == 1:
                return value
    return None


def replace_at(batch: Any, path: Path, value: torch.Tensor) -> Any:
    """A copy of ``batch`` with ``value`` at ``path`` (containers copied, tensors shared)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(batch, Mapping):
        out = dict(batch)
        out[head] = replace_at(batch[head], rest, value)  # type: ignore[index]
        return type(batch)(out) if type(batch) is not dict else out  # type: ignore[call-arg]
    if isinstance(batch, (tuple, list)):
        items = list(batch)
        items[head] = replace_at(batch[head], rest, value)  # type: ignore[index]
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
            return type(batch)(*items)
        return type(batch)(items)
    raise TypeError(f"cannot replace the input inside a {type(batch).__name__}")


def find_scores(output: Any, spec: Spec = None) -> torch.Tensor:
    """The class scores ``(N, num_classes)`` inside a model output.

    Raises:
        ModelIOError: If no such tensor is found; the message names ``scores=``.
    """
    if spec is not None:
        value, _ = _lookup(output, spec, "output", "scores")
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ModelIOError(
                f"`scores` must give class scores of shape (N, num_classes); got "
                f"{_describe(value)} from the output {_describe(output)}"
            )
        return value
    if isinstance(output, torch.Tensor):
        if output.dim() == 2:
            return output
    elif isinstance(output, Mapping):
        for key in SCORE_KEYS:
            value = output.get(key)
            if isinstance(value, torch.Tensor) and value.dim() == 2:
                return value
    elif isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor) and item.dim() == 2:
                return item
    else:
        for key in SCORE_KEYS:  # dataclass-like outputs (``out.logits``)
            value = getattr(output, key, None)
            if isinstance(value, torch.Tensor) and value.dim() == 2:
                return value
    raise ModelIOError(
        f"the model output {_describe(output)} holds no class scores of shape (N, num_classes); "
        "pass `scores=` (a key such as 'logits', an index, or a function of the output), or "
        "watch a submodule that returns logits"
    )


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of ``model``'s first floating parameter or buffer, if any."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    for tensor in model.buffers():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (the CPU if it has none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _channels_last(model: nn.Module) -> bool:
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 4:
            return weight.is_contiguous(memory_format=torch.channels_last) and not (
                weight.is_contiguous()
            )
    return False


def cast_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` on the model's device, floating inputs in the model's dtype and memory format.

    Integer inputs (token ids) keep their dtype. A new tensor is returned when anything changes,
    and a clone otherwise, so that it is a normal tensor even when ``x`` was created under
    ``torch.inference_mode()``.
    """
    device = model_device(model)
    dtype = model_dtype(model) if x.is_floating_point() else None
    out = x.detach().to(device=device, dtype=dtype or x.dtype)
    if x.dim() == 4 and out.is_floating_point() and _channels_last(model):
        out = out.contiguous(memory_format=torch.channels_last)
    return out.clone() if out is x or out.data_ptr() == x.data_ptr() else out


def _cast_batch(batch: Any, model: nn.Module, path: Path | None, x: torch.Tensor) -> Any:
    """``batch`` with the input replaced by ``x`` and its other tensors on the model's device."""
    device = model_device(model)

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().to(device)
        if isinstance(value, Mapping):
            out = {k: move(v) for k, v in value.items()}
            return out if type(value) is dict else type(value)(out)  # type: ignore[call-arg]
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(move(v) for v in value))
        if isinstance(value, (tuple, list)):
            return type(value)(move(v) for v in value)
        return value

    moved = move(batch)
    return replace_at(moved, path, x) if path is not None else moved


def input_kind(x: torch.Tensor) -> InputKind:
    """``image`` (N, C, H, W), ``sequence`` (N, C, L), ``tokens`` (integer (N, L)) or ``other``."""
    if not x.is_floating_point():
        return "tokens" if x.dim() == 2 else "other"
    return {4: "image", 3: "sequence"}.get(x.dim(), "other")  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelIO:
    """How to call a model on a probe and read its class scores.

    Attributes:
        call: ``"input"`` — ``forward`` takes the input tensor; ``"batch"`` — it takes the
            whole batch (the input is replaced inside it when perturbed).
        input_path: Where the input sits in the batch (``()`` for a tensor batch; ``None`` when
            a ``probe_input`` function found it, which only works with ``call="input"``).
        input_kind: ``image``, ``sequence``, ``tokens`` or ``other``.
        input_shape: The input's shape without the batch dimension.
        num_classes: Width of the class scores, or ``None`` when there are none.
        scores_problem: Why no class scores were found (``None`` when they were).
        input_spec: The ``probe_input`` setting (``None``: automatic).
        scores_spec: The ``scores`` setting (``None``: automatic).
        output_is_scores: ``forward`` takes the input and returns the class scores themselves
            (a plain classifier: no adapter needed).
    """

    call: Literal["input", "batch"]
    input_path: Path | None
    input_kind: InputKind
    input_shape: tuple[int, ...]
    num_classes: int | None
    scores_problem: str | None = None
    input_spec: Spec = None
    scores_spec: Spec = None
    output_is_scores: bool = False

    @property
    def has_scores(self) -> bool:
        """Whether the output holds class scores."""
        return self.scores_problem is None

    def batch_with(self, batch: Any, x: torch.Tensor, model: nn.Module) -> Any:
        """What to pass to ``model`` so that it sees ``x`` as its input."""
        if self.call == "input":
            return x
        return _cast_batch(batch, model, self.input_path, x)

    def forward(self, model: nn.Module, batch: Any, x: torch.Tensor | None = None) -> Any:
        """Run ``model`` on ``batch`` (with its input replaced by ``x`` when given)."""
        if x is None:
            x, _ = find_input(batch, self.input_spec)
            x = cast_input(x, model)
        return model(self.batch_with(batch, x, model))

    def scores_of(self, output: Any) -> torch.Tensor:
        """The class scores in ``output``."""
        return find_scores(output, self.scores_spec)

    def scores_fn(
        self, model: nn.Module, batch: Any
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``x -> scores`` for Captum: the model run with ``x`` in place of the probe input.

        ``None`` for a plain classifier (``model(x)`` already gives the scores).

        Raises:
            ModelIOError: If the output has no class scores.
        """
        if not self.has_scores:
            raise ModelIOError(self.scores_problem or "the model output has no class scores")
        if self.call == "batch" and self.input_path is None:
            raise ModelIOError(
                "the model takes the whole batch and `probe_input` is a function, so a perturbed "
                "input cannot be put back into the batch; pass `probe_input` as a key or an index"
            )

        if self.output_is_scores:
            return None

        def fn(x: torch.Tensor) -> torch.Tensor:
            return self.scores_of(model(self.batch_with(batch, x, model)))

        return fn


def resolve_io(
    model: nn.Module,
    batch: Any,
    *,
    probe_input: Spec = None,
    scores: Spec = None,
) -> ModelIO:
    """Find how to call ``model`` on ``batch`` and where its class scores are.

    Runs one forward of the batch (call it inside :func:`cnnviz.analysis.guard.observe` and
    ``torch.no_grad()``): first ``model(input)``; if that raises and the batch is more than the
    input, ``model(batch)``.

    Args:
        model: The watched module.
        batch: A probe batch as the data loader yields it.
        probe_input: Where the input is (see :func:`find_input`).
        scores: Where the class scores are (see :func:`find_scores`).

    Returns:
        The :class:`ModelIO`. A model without class scores is not an error here:
        ``scores_problem`` says why (callbacks that need scores turn themselves off).

    Raises:
        ModelIOError: If the input cannot be found, or the model runs on neither the input nor
            the batch (the message gives both errors and the fix).
    """
    x, path = find_input(batch, probe_input)
    xc = cast_input(x, model)
    try:
        out = model(xc)
        call: Literal["input", "batch"] = "input"
    except Exception as first:
        if path in ((), None):
            raise ModelIOError(
                f"the model cannot run on the probe input {_describe(x)}: "
                f"{type(first).__name__}: {first}. Pass `probe_input=` for another part of the "
                "batch, or `module=` for a submodule that takes a tensor"
            ) from first
        try:
            out = model(_cast_batch(batch, model, path, xc))
            call = "batch"
        except Exception as second:
            raise ModelIOError(
                f"the model runs neither on the probe input {_describe(x)} "
                f"({type(first).__name__}: {first}) nor on the batch {_describe(batch)} "
                f"({type(second).__name__}: {second}). Pass `probe_input=` to say where the "
                "input is, or `module=` for a submodule that takes a tensor"
            ) from second
    problem = None
    num_classes = None
    try:
        found = find_scores(out, scores)
        num_classes = int(found.shape[1])
    except ModelIOError as err:
        problem = str(err)
        found = None
    return ModelIO(
        call=call,
        input_path=path,
        input_kind=input_kind(x),
        input_shape=tuple(int(s) for s in x.shape[1:]),
        num_classes=num_classes,
        scores_problem=problem,
        input_spec=probe_input,
        scores_spec=scores,
        output_is_scores=call == "input" and found is out,
    )


class _Scope(nn.Module):
    """Runs ``inner`` while naming its layers by their path in the whole model.

    ``scoped(module, "backbone")`` has ``backbone`` as its only child (through empty containers
    for dotted paths), so ``named_modules()`` gives ``backbone.0`` as in the user's
    LightningModule, while calling it calls the backbone itself.
    """

    def __init__(self, path: str, inner: nn.Module) -> None:
        super().__init__()
        self.__dict__["_inner"] = inner  # not a child: only the path registers it
        head, _, rest = path.partition(".")
        node: nn.Module = self
        while rest:
            holder = nn.Module()
            node.add_module(head, holder)
            node = holder
            head, _, rest = rest.partition(".")
        node.add_module(head, inner)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["_inner"](*args, **kwargs)


def scoped(inner: nn.Module, path: str | None) -> nn.Module:
    """``inner`` as seen from its parent model: layer names carry the prefix ``path.``.

    Calling the result calls ``inner``; parameters and modules are shared. ``path`` ``None`` or
    empty returns ``inner`` itself.
    """
    if not path:
        return inner
    return _Scope(path, inner)
