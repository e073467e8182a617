"""The function Captum differentiates, and the safety nets around Captum."""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnviz.analysis.attribution._model import scores_message

_SIGNATURE = inspect.Signature([inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
# Attributes DeepLift sets on modules during a call; removed again if Captum leaves them.
_CAPTUM_MODULE_ATTRS = ("input", "output", "input_ref")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class TokenSwap:
    """Feed embedding vectors to a model that takes token ids.

    The model runs on the token ids (repeated to the batch Captum evaluates) while a forward
    hook replaces the embedding layer's output with the vectors Captum differentiates — what
    Captum's layer methods do, for every input-space method. The hook lives for one model
    evaluation.

    Attributes:
        module: The ``nn.Embedding``.
        ids: The token ids of the current chunk, ``(n, L)``.
        interleave: How Captum expanded the batch: ``True`` for ``repeat_interleave`` (noise
            tunnel, GradientShap), ``False`` for ``repeat`` (integrated gradients, DeepLift).
    """

    def __init__(self, module: nn.Module, interleave: bool) -> None:
        self.module = module
        self.ids: torch.Tensor | None = None
        self.interleave = interleave

    def run(self, fn: Callable[[torch.Tensor], Any], vectors: torch.Tensor) -> Any:
        """Evaluate ``fn`` on the ids with the embedding output replaced by ``vectors``."""
        ids = self.ids
        assert ids is not None
        k, rest = divmod(vectors.shape[0], ids.shape[0])
        if rest or k == 0:
            raise RuntimeError(
                f"cnnviz: {vectors.shape[0]} embedding rows for {ids.shape[0]} sequences"
            )
        if k > 1:
            ids = ids.repeat_interleave(k, dim=0) if self.interleave else ids.repeat(k, 1)

        def replace(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
            if out.shape != vectors.shape:
                raise ValueError(
                    f"`embedding`: the layer's output has shape {tuple(out.shape)} but the token "
                    f"vectors have {tuple(vectors.shape)}; the embedding must map (N, L) ids to "
                    "(N, L, D) vectors once per forward pass"
                )
            return vectors.to(out.dtype)

        handle = self.module.register_forward_hook(replace)
        try:
            return fn(ids)
        finally:
            handle.remove()


class Head:
    """Wraps the model (or the user's ``forward``) for Captum.

    Casts floating inputs to the model's dtype (a ``bfloat16`` model gets ``bfloat16``; Captum
    computes around it in ``float32``), returns ``float32`` scores for low-precision models, and
    checks the output shape. With ``reduce=True`` (cnnviz's own single-pass methods) it
    returns the sum over the batch of each input's target score, a scalar — its gradient is
    exactly the per-input gradient Captum would compute from N separate scores — where the
    targets are ``self.targets`` or, when that is ``None``, the predicted classes of this very
    forward pass (kept in ``self.picked``). With ``tokens`` set, the input is the embedding
    output (see :class:`TokenSwap`).
    """

    # Captum inspects the forward function's signature on every model evaluation; a fixed one
    # saves that work.
    __signature__ = _SIGNATURE

    def __init__(
        self,
        model: nn.Module,
        reduce: bool,
        *,
        fn: Callable[[torch.Tensor], Any] | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.fn = model if fn is None else fn
        self.source = "`model`" if fn is None else "`forward`"
        self.reduce = reduce
        self.dtype = dtype
        self.targets: torch.Tensor | None = None
        self.picked: torch.Tensor | None = None
        self.tokens: TokenSwap | None = None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The model's ``(N, num_classes)`` scores for ``x`` (checked, at least ``float32``)."""
        if self.tokens is not None:
            out = self.tokens.run(self.fn, x)
        else:
            if self.dtype is not None and x.dtype != self.dtype and x.is_floating_point():
                x = x.to(self.dtype)
            out = self.fn(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ValueError(scores_message(out, self.source))
        if out.dtype in _LOW_PRECISION:
            out = out.float()
        return out

    def as_module(self) -> nn.Module:
        """The module for Captum's hook-based methods.

        The model itself when this head adds nothing to it (the model's own forward, no token
        swap, no reduction, no cast to a low precision), else a :class:`HeadModule` around it.
        """
        plain = (
            self.fn is self.model
            and self.tokens is None
            and not self.reduce
            and self.dtype not in _LOW_PRECISION
        )
        return self.model if plain else HeadModule(self)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scores(x)
        if not self.reduce:
            return out
        idx = self.targets
        if idx is None:
            idx = out.detach().argmax(dim=1)
            self.picked = idx
        return out.gather(1, idx.unsqueeze(1)).sum()


class HeadModule(nn.Module):
    """:class:`Head` as an ``nn.Module``, for the Captum methods that hook the model's modules.

    They find those modules through ``self.model.apply``.
    """

    __signature__ = _SIGNATURE

    def __init__(self, head: Head) -> None:
        super().__init__()
        self.model = head.model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


@contextlib.contextmanager
def no_leftovers(
    model: nn.Module, attrs: bool, modules: Sequence[nn.Module] | None = None
) -> Iterator[None]:
    """Remove hooks (and, with ``attrs``, DeepLift's module attributes) Captum leaves behind.

    Captum removes its hooks itself, but not always (e.g. DeepLift's ``module.input`` when a
    forward pass raises); this is the safety net.

    Hook handle ids grow monotonically, so every hook registered inside the window has an id
    at least the value of the counter on entry; the module tree is walked only when a hook was
    registered. ``modules``: ``list(model.modules())`` when the caller has it already.
    """
    first_id = RemovableHandle.next_id
    mods = list(model.modules()) if modules is None else modules
    had = {(id(m), a) for m in mods if attrs for a in _CAPTUM_MODULE_ATTRS if a in m.__dict__}
    try:
        yield
    finally:
        for m in mods if RemovableHandle.next_id != first_id else ():
            found = m.__dict__
            for d in HOOK_DICTS:
                table = found.get(d)
                if table:
                    for k in [k for k in table if isinstance(k, int) and k >= first_id]:
                        del table[k]
        for m in mods if attrs else ():
            for a in _CAPTUM_MODULE_ATTRS:
                if a in m.__dict__ and (id(m), a) not in had:
                    delattr(m, a)


@contextlib.contextmanager
def seeded(seed: int | None, cuda: Sequence[int]) -> Iterator[None]:
    """Fork NumPy's and Python's global RNG (torch's is forked by ``observe``) and seed them.

    Noise-based methods become reproducible, and training's random streams do not move.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
