"""The public entry points: visualize channels or layers, and find duplicate layers.

:func:`visualize_channels` optimises one image per channel of one layer (or per class logit),
:func:`visualize_layers` several layers, each distinct image once, and :func:`duplicate_layers`
says which layers would get another's image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from cnnviz.analysis.featvis._duplicates import _find_duplicates
from cnnviz.analysis.featvis._optimise import _copy, _optimise
from cnnviz.analysis.featvis._reading import _plans
from cnnviz.analysis.featvis._settings import (
    _channels_for,
    _check_layers,
    _guarded,
    _layer_list,
    _resolve_channels,
    _settings,
)
from cnnviz.analysis.featvis.result import FeatVisResult, Objective, Param


def visualize_channels(
    model: nn.Module,
    layer: str | None,
    channels: Sequence[int] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    objective: Objective = "mean",
    mean: Sequence[float] | torch.Tensor | float | None = None,
    std: Sequence[float] | torch.Tensor | float | None = None,
    param: Param = "fourier",
    decorrelate: bool = True,
    steps: int = 256,
    lr: float = 0.15,
    transforms: bool = True,
    relu_redirect: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    history_every: int = 16,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> FeatVisResult:
    """Optimise one input image per channel so that it maximally activates that channel.

    The model is run under :func:`cnnviz.analysis.guard.observe` (eval mode, parameters frozen,
    autograd on even inside ``torch.inference_mode``, RNG forked); only the image parameters
    are updated (Adam). The layer's maps are read where
    :func:`~cnnviz.analysis.readout.find_readouts` says (after a conv's normalisation and
    activation); hooks exist for the call only, and each forward pass stops as soon as the
    tensor was read. See :mod:`cnnviz.analysis.featvis` for the method and its defaults.

    Args:
        model: Any ``nn.Module`` taking ``[N, C, H, W]`` images, in any floating dtype and
            memory format (the image is optimised in float32 and cast for each forward).
        layer: Qualified name of a 2-D conv or pooling layer (see
            :func:`cnnviz.analysis.layers.list_layers`), or ``None`` to maximise class logits.
        channels: Channel indices of ``layer`` (class indices when ``layer`` is ``None``);
            ``None`` for all of them. One image per entry.
        input_shape: ``(C, H, W)`` of the image; default: ``model.expected_input_shape``.
        objective: ``"mean"``: the mean of the channel's read map over the units whose
            receptive field lies inside the image (the centre unit where none does);
            ``"center"``: its centre unit. Ignored for logits.
        mean: Per-channel mean of the data normalisation (a number or ``C`` numbers); default 0.
        std: Per-channel standard deviation of the normalisation; default 1.
        param: ``"fourier"`` (decorrelated, 1/f-scaled spectrum) or ``"pixel"``.
        decorrelate: Mix colour planes by the fixed colour-correlation matrix (3-channel inputs).
        steps: Adam steps per image.
        lr: Adam learning rate (see :mod:`cnnviz.analysis.featvis` for the relative ``eps``).
        transforms: Apply random pad/jitter/scale/rotation each step.
        relu_redirect: While optimising, give every ReLU of the model (``nn.ReLU`` modules and
            functional ``relu`` calls) Lucid's "redirected" gradient, so an image whose target
            units all start negative (zero gradient) still moves towards activating them.
            The forward values are unchanged; in-place ReLU modules are made out-of-place
            inside the window (and restored).
        seed: Seed of the dedicated generator for the initial image and the transforms.
        batch_size: Images optimised together; ``None`` for all channels in one batch.
        device: Where to optimise; default: the device of the model's parameters (CPU if none).
        history_every: Record the objective every this many steps (and at the last step).
        should_stop: Called before every step; when it returns ``True`` the optimisation ends
            and the images optimised so far are returned (see
            :attr:`FeatVisResult.stopped_at`). E.g. ``lambda: trainer.should_stop``.
        progress: Called after every step with the number of steps done so far in this call
            (all batches together: ``ceil(len(channels) / batch_size) * steps`` in the end).

    Returns:
        A :class:`FeatVisResult` (images in ``[0, 1]`` on the CPU, final activations, history,
        the readout and the units the objective averaged).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``layer`` is not a 2-D conv/pooling layer (the message lists the valid
            names), a channel is out of range, ``input_shape`` does not fit the model, or an
            option is not one of its choices.

    Example:
        >>> res = visualize_channels(model, "features.c3", [0, 1, 2], mean=dm.mean, std=dm.std)
        >>> res.images.shape, res.activations.shape, res.readout.describe()
        (torch.Size([3, 3, 32, 32]), torch.Size([3]), 'read after act3')
    """
    cfg = _settings(
        model,
        input_shape=input_shape,
        objective=objective,
        mean=mean,
        std=std,
        param=param,
        decorrelate=decorrelate,
        steps=steps,
        lr=lr,
        transforms=transforms,
        relu_redirect=relu_redirect,
        seed=seed,
        batch_size=batch_size,
        device=device,
        history_every=history_every,
        should_stop=should_stop,
        progress=progress,
    )
    _check_layers(model, [layer])
    with _guarded(model, cfg):
        cfg.enter()
        plan = _plans(model, cfg, [layer])[layer]
        what = "classes" if layer is None else "channels"
        chosen = _resolve_channels(channels, plan.count, what)
        return _optimise(model, cfg, plan, chosen)[0]


def visualize_layers(
    model: nn.Module,
    layers: Sequence[str],
    channels: Sequence[int] | Mapping[str, Sequence[int] | None] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    objective: Objective = "mean",
    mean: Sequence[float] | torch.Tensor | float | None = None,
    std: Sequence[float] | torch.Tensor | float | None = None,
    param: Param = "fourier",
    decorrelate: bool = True,
    steps: int = 256,
    lr: float = 0.15,
    transforms: bool = True,
    relu_redirect: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    history_every: int = 16,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
    skip_duplicates: bool = True,
) -> dict[str, FeatVisResult]:
    """:func:`visualize_channels` for several layers, each distinct image optimised once.

    Readouts and receptive fields are found once for all layers. A layer whose image would equal
    another selected layer's (:func:`duplicate_layers`: a global or identity pool of that
    layer's read tensor) is not optimised: its result holds the other layer's images for its
    channels, its own activations (one forward pass) and :attr:`FeatVisResult.same_as`.

    Args:
        model: As for :func:`visualize_channels`.
        layers: Qualified names of 2-D conv or pooling layers.
        channels: Channel indices for every layer, a mapping ``{layer: indices or None}``
            (missing layers: all channels), or ``None`` for all channels of every layer.
        input_shape: As for :func:`visualize_channels`; likewise ``objective``, ``mean``,
            ``std``, ``param``, ``decorrelate``, ``steps``, ``lr``, ``transforms``,
            ``relu_redirect``, ``seed`` (each layer starts from the same seed), ``batch_size``,
            ``device`` and ``history_every``.
        objective: See :func:`visualize_channels`.
        mean: See :func:`visualize_channels`.
        std: See :func:`visualize_channels`.
        param: See :func:`visualize_channels`.
        decorrelate: See :func:`visualize_channels`.
        steps: See :func:`visualize_channels`.
        lr: See :func:`visualize_channels`.
        transforms: See :func:`visualize_channels`.
        relu_redirect: See :func:`visualize_channels`.
        seed: See :func:`visualize_channels`.
        batch_size: See :func:`visualize_channels`.
        device: See :func:`visualize_channels`.
        history_every: See :func:`visualize_channels`.
        should_stop: Checked before every step; when it returns ``True`` the layer being
            optimised is returned as far as it got and later layers are left out.
        progress: Called after every step with the steps done so far over all layers.
        skip_duplicates: Copy instead of optimising layers whose image would be another's.

    Returns:
        ``{layer: FeatVisResult}`` in the order of ``layers`` (only the layers reached when
        stopped).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: As for :func:`visualize_channels`, or if ``layers`` is empty or repeats
            a name.

    Example:
        >>> out = visualize_layers(resnet, ["layer4.1.conv2", "avgpool"], [0, 1])
        >>> out["avgpool"].same_as
        'layer4.1.conv2'
    """
    cfg = _settings(
        model,
        input_shape=input_shape,
        objective=objective,
        mean=mean,
        std=std,
        param=param,
        decorrelate=decorrelate,
        steps=steps,
        lr=lr,
        transforms=transforms,
        relu_redirect=relu_redirect,
        seed=seed,
        batch_size=batch_size,
        device=device,
        history_every=history_every,
        should_stop=should_stop,
        progress=progress,
    )
    names = _layer_list(layers)
    _check_layers(model, names)
    with _guarded(model, cfg):
        cfg.enter()
        plans = _plans(model, cfg, names)
        chosen = {
            n: _resolve_channels(_channels_for(channels, n), plans[n].count, "channels")
            for n in names
        }
        same = _find_duplicates(model, cfg, plans) if skip_duplicates else {}
        same = {n: s for n, s in same.items() if set(chosen[n]) <= set(chosen[s])}
        results: dict[str, FeatVisResult] = {}
        done, stopped = 0, False
        for name in names:
            if name in same:
                continue
            if results and should_stop is not None and should_stop():
                stopped = True
                break
            result, done = _optimise(model, cfg, plans[name], chosen[name], done)
            results[name] = result
            if result.stopped:
                stopped = True
                break
        if not stopped:  # copies cost one forward pass each; none after a stop
            for name, source in same.items():
                results[name] = _copy(model, cfg, plans[name], results[source], chosen[name])
        return {n: results[n] for n in names if n in results}


def duplicate_layers(
    model: nn.Module,
    layers: Sequence[str],
    *,
    input_shape: Sequence[int] | None = None,
    objective: Objective = "mean",
) -> dict[str, str]:
    """Which of ``layers`` would get the same feature-visualisation image as another.

    A selected pooling layer is a duplicate of another selected layer when its input is exactly
    the tensor read for that layer (no parameter or operation between: the read tensor itself,
    e.g. a conv's ReLU output) and it passes that tensor on unchanged (kernel 1 and stride 1, or
    an adaptive pool to the same size), or — with ``objective="mean"`` — pools it globally (an
    adaptive pool to 1x1, or one window covering the whole map). Chains resolve to the first
    layer. Found in one guarded forward pass of a grey image.

    Args:
        model: As for :func:`visualize_channels`.
        layers: Qualified names of 2-D conv or pooling layers.
        input_shape: ``(C, H, W)``; default: ``model.expected_input_shape``.
        objective: The objective the images are for (``"mean"`` or ``"center"``).

    Returns:
        ``{duplicate layer: layer whose image it gets}``; empty when there is none.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a layer is not a 2-D conv/pooling layer (the message lists the valid
            names) or ``input_shape`` does not fit the model.

    Example:
        >>> duplicate_layers(resnet, ["layer4.1.conv2", "avgpool"])
        {'avgpool': 'layer4.1.conv2'}
    """
    cfg = _settings(model, input_shape=input_shape, objective=objective, relu_redirect=False)
    names = _layer_list(layers)
    _check_layers(model, names)
    with _guarded(model, cfg):
        cfg.enter()
        return _find_duplicates(model, cfg, _plans(model, cfg, names))
