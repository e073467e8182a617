"""``inspect_model``: the report of a trained model on some images, without a training run.

The model is built from the registry (and a checkpoint), the analysis functions run on it
directly (no Trainer), their results go to a fresh run store, and the report is built from it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cnnviz.store import RunStore

__all__ = ["inspect_model", "load_images", "load_model"]

Normalize = Literal["shapes", "imagenet", "none"]
_STATS = {"shapes": ((0.5,), (0.3,)), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
DEFAULT_METHODS = ("saliency", "integrated_gradients", "grad_cam")


def _load_checkpoint(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"`checkpoint` {str(p)!r} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"`checkpoint` {str(p)!r} could not be read as a Lightning checkpoint or state_dict "
            f"({type(err).__name__}: {err}); save one with `trainer.save_checkpoint(...)` or "
            "`torch.save(model.state_dict(), ...)`"
        ) from err


def _infer_from_state(state: Mapping[str, Any]) -> dict[str, int]:
    """Input channels (first conv weight) and classes (last linear weight) of a state_dict."""
    weights = [v for k, v in state.items() if k.endswith("weight") and hasattr(v, "dim")]
    out: dict[str, int] = {}
    convs = [w for w in weights if w.dim() in (3, 4)]
    linears = [w for w in weights if w.dim() == 2]
    if convs:
        out["in_channels"] = int(convs[0].shape[1])
    if linears:
        out["num_classes"] = int(linears[-1].shape[0])
    return out


def load_model(
    name: str | None,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    input_size: int | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build a registry model, with the weights of a checkpoint when given.

    Args:
        name: Registry name (``cnnviz.models.available()``); may be ``None`` when a Lightning
            checkpoint of ``CaseStudyModule`` names the model.
        checkpoint: A Lightning checkpoint of ``cnnviz.module.CaseStudyModule`` or a plain
            ``state_dict`` of the model (keys may carry the ``net.`` prefix).
        input_size: Input size (default: the checkpoint's, else the model's small CPU size).
        num_classes: Output classes (default: the checkpoint's, else 9, the Shapes classes).
            For a plain ``state_dict``, classes and input channels are read from its first
            conv and last linear weights unless given.

    Returns:
        ``(model in eval mode, model name, facts)`` where facts hold ``epoch``, ``step`` and
        the constructor arguments.

    Raises:
        ValueError: For an unknown model, an unreadable checkpoint or weights that do not fit
            (the message says which option to set).
    """
    from cnnviz import models

    ckpt = _load_checkpoint(checkpoint) if checkpoint is not None else None
    kwargs: dict[str, Any] = {}
    facts: dict[str, Any] = {"epoch": None, "step": None}
    state: Mapping[str, Any] | None = None
    if ckpt is not None and "state_dict" in ckpt:
        hp = dict(ckpt.get("hyper_parameters") or {})
        if isinstance(hp.get("model"), str):
            if name is not None and name != hp["model"]:
                raise ValueError(
                    f"`model` is {name!r} but the checkpoint holds {hp['model']!r}; pass "
                    f"--model {hp['model']} (or leave --model out)"
                )
            name = hp["model"]
        kwargs.update(dict(hp.get("data_info") or {}))
        kwargs.update(dict(hp.get("model_kwargs") or {}))
        state = ckpt["state_dict"]
        facts.update(epoch=ckpt.get("epoch"), step=ckpt.get("global_step"))
    elif ckpt is not None:
        state = ckpt
        kwargs.update(_infer_from_state(state))
    if name is None:
        raise ValueError(f"`model` is required; choose from: {', '.join(models.available())}")
    spec = models.spec(name)
    if spec.task != "image":
        raise ValueError(
            f"`model` {name!r} takes {spec.task} input; `cnnviz inspect` needs an image model "
            f"({', '.join(m for m in models.available() if models.spec(m).task == 'image')})"
        )
    if input_size is not None:
        kwargs["input_size"] = input_size
    kwargs.setdefault("input_size", spec.small_input_size)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    kwargs.setdefault("num_classes", 9)
    model = models.create(name, **kwargs)
    if state is not None:
        keys = list(state)
        if keys and all(k.startswith("net.") for k in keys):
            state = {k[len("net.") :]: v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"the checkpoint's weights do not fit {name} built with {kwargs}: "
                f"{str(err).splitlines()[0]} ... set --num-classes / --input-size to the values "
                "the model was trained with"
            ) from err
    model.eval()
    facts["kwargs"] = kwargs
    return model, name, facts


def load_images(
    files: Sequence[str | os.PathLike[str]], size: int, channels: int, normalize: Normalize
) -> tuple[torch.Tensor, np.ndarray]:
    """Read image files, resize to ``size`` × ``size`` and normalise them.

    Returns:
        ``(model inputs [N, C, S, S], display images [N, S, S, C] in [0, 1])``.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If a file is not an image torchvision can decode.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.functional import resize

    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    out = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"`images`: {str(p)!r} does not exist")
        try:
            img = decode_image(read_file(str(p)), mode=mode)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"`images`: {str(p)!r} is not a readable image ({err})") from err
        img = resize(img.float() / 255.0, [size, size], antialias=True).clamp(0, 1)
        out.append(img)
    display = torch.stack(out)
    x = display
    if normalize != "none":
        mean, std = _STATS[normalize]
        m = torch.tensor(mean * (channels // len(mean) or 1))[:channels].view(1, -1, 1, 1)
        s = torch.tensor(std * (channels // len(std) or 1))[:channels].view(1, -1, 1, 1)
        x = (display - m) / s
    return x, display.permute(0, 2, 3, 1).numpy()


def _rows(table: Any) -> list[dict[str, Any]]:
    """``LayerRow`` objects as rows of the store's ``layer_table`` record."""
    from cnnviz.report.sections import normalise_row

    rows = []
    for r in table:
        row = r.as_dict() if hasattr(r, "as_dict") else dict(r)
        row = normalise_row(row)
        row.pop("receptive_field", None)
        row.pop("kernel_size", None)
        row.pop("params_arithmetic", None)
        rows.append(row)
    return rows


def _write_filters(store: RunStore, model: nn.Module, event: dict[str, Any], at: dict) -> None:
    from cnnviz.analysis.layers import list_layers

    convs = list_layers(model, "conv")
    for n, info in enumerate(convs):
        module = model.get_submodule(info.name)
        w = module.weight.detach().float().cpu()
        shown = w[:64, :16].numpy()
        norms = w.flatten(1).norm(dim=1).numpy()
        store.write(
            "filters",
            {"weight": shown, "norms": norms},
            source="inspect",
            layer=info.name,
            **at,
            meta={
                **event,
                "channels": list(range(len(shown))),
                "full_shape": list(w.shape),
                "rgb": n == 0 and info.dims == 2 and w.shape[1] == 3,
                "dead": np.flatnonzero(norms < 1e-8).tolist(),
                "unchanged": [],
                "nonfinite": int((~np.isfinite(shown)).sum()),
                "layer_type": info.type,
                "bias": getattr(module, "bias", None) is not None,
            },
        )


def _write_activations(
    store: RunStore,
    model: nn.Module,
    x: torch.Tensor,
    event: dict,
    at: dict,
    class_names: list[str] | None,
) -> torch.Tensor:
    from cnnviz.analysis.capture import LayerCapture
    from cnnviz.analysis.layers import list_layers

    names = [i.name for i in list_layers(model)]
    cap = LayerCapture(model, names, max_channels=16, max_size=32, post_activation=True)
    with cap:
        logits = model(x)
    probs = torch.softmax(logits.detach().float().flatten(1), dim=1)
    store.write(
        "predictions",
        {"probs": probs.numpy()},
        source="inspect",
        **at,
        meta={**event, "class_names": class_names},
    )
    for name in names:
        r = cap.results.get(name)
        if r is None:
            continue
        store.write(
            "activations",
            {
                "maps": r.maps.float().numpy().astype(np.float16),
                "channels": r.channels.numpy(),
                "mean": r.mean.numpy(),
                "max": r.max.numpy(),
                "min": r.min.numpy(),
                "zero_fraction": r.zero_fraction.numpy(),
            },
            source="inspect",
            layer=name,
            **at,
            meta={
                **event,
                "shape": list(r.shape),
                "read_from": cap.sources[name],
                "nonfinite": r.nonfinite,
                "layer_type": type(model.get_submodule(name)).__name__,
            },
        )
    return probs


def _write_receptive(
    store: RunStore,
    model: nn.Module,
    shape: tuple[int, ...],
    display: np.ndarray,
    event: dict,
    at: dict,
) -> str | None:
    try:
        from cnnviz.analysis.receptive_field import receptive_fields
    except ImportError:
        return None
    try:
        rfs = receptive_fields(model, shape)
    except ValueError as err:  # a model the graph walk cannot model: say so in run.json
        return str(err)
    for name, rf in rfs.items():
        if rf.ndim != 2 or len(rf.output_spatial) != 2:
            continue
        unit = tuple(s // 2 for s in rf.output_spatial)
        store.write(
            "receptive_field",
            {"region_image": display[0]},
            source="inspect",
            layer=name,
            **at,
            meta={
                **event,
                "size": list(rf.size),
                "jump": list(rf.jump),
                "start": list(rf.start),
                "unit": list(unit),
                "region": list(rf.region(*unit)),
                "misaligned": rf.misaligned,
            },
        )
    try:
        from cnnviz.analysis.layer_table import layer_table
    except ImportError:
        return None
    try:
        rows = _rows(layer_table(model, shape))
    except (TypeError, ValueError) as err:
        return str(err)
    if rows:
        store.write("layer_table", None, source="inspect", **at, meta={**event, "rows": rows})
    return None


def _write_attributions(
    store: RunStore,
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str],
    event: dict,
    at: dict,
) -> None:
    try:
        from cnnviz.analysis.attribution import AttributionResult, attribute_many
    except ImportError:
        return
    results = attribute_many(model, x, list(methods))
    arrays, notes, unavailable, targets, layers = {}, {}, {}, None, {}
    for m, res in results.items():
        if isinstance(res, AttributionResult):
            arrays[m] = res.attributions.float().sum(dim=1).numpy()
            targets = res.targets.tolist() if targets is None else targets
            if res.note:
                notes[m] = res.note
            if res.layer:
                layers[m] = res.layer
        else:
            unavailable[m] = str(res)
    store.write(
        "attributions",
        arrays,
        source="inspect",
        **at,
        meta={
            **event,
            "methods": list(arrays),
            "targets": targets,
            "notes": notes,
            "unavailable": unavailable,
            "layers": layers,
        },
    )


def inspect_model(
    model: str | None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    images: Sequence[str | os.PathLike[str]] | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
    num_probe: int = 8,
    normalize: Normalize = "shapes",
    methods: Sequence[str] | None = DEFAULT_METHODS,
    run_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    plotly_js: Literal["inline", "cdn"] = "inline",
    progress: bool = True,
) -> Path:
    """Write a run store and the report for a (trained) model and some images.

    Records filters, activation maps and predictions, plus receptive fields and attributions
    where those analyses apply, then builds the report.

    Args:
        model: Registry name (optional with a ``CaseStudyModule`` checkpoint).
        checkpoint: Lightning checkpoint or ``state_dict`` (default: random weights).
        images: Image files (default: the first ``num_probe`` Shapes validation images).
        input_size: Input size (default: the checkpoint's, else the model's small size).
        num_classes: Number of classes (default: the checkpoint's, else 9).
        num_probe: Shapes images to use when ``images`` is not given.
        normalize: Normalisation of image files: ``"shapes"``, ``"imagenet"`` or ``"none"``.
        methods: Attribution methods (``None`` or empty: none).
        run_dir: Where the store goes (default ``runs/inspect-<model>-<time>``); must not hold
            a store already.
        out: Report file (default ``<run_dir>/report.html``).
        plotly_js: ``"inline"`` or ``"cdn"``.
        progress: Progress lines on stderr.

    Returns:
        The report's path.

    Raises:
        ValueError: Bad arguments (see :func:`load_model`, :func:`load_images`), or a
            ``run_dir`` that already holds a store.

    Example:
        >>> inspect_model("lenet5", checkpoint="runs/x/checkpoints/last.ckpt")
    """
    import sys

    from cnnviz.analysis.layers import list_layers
    from cnnviz.report.build import build_report

    if normalize not in ("shapes", "imagenet", "none"):
        raise ValueError(f"`normalize` must be 'shapes', 'imagenet' or 'none'; got {normalize!r}")
    if not isinstance(num_probe, int) or num_probe < 1:
        raise ValueError(f"`num_probe` must be a positive int; got {num_probe!r}")

    def say(msg: str) -> None:
        if progress:
            print(f"cnnviz inspect: {msg}", file=sys.stderr, flush=True)

    net, name, facts = load_model(model, checkpoint, input_size=input_size, num_classes=num_classes)
    shape = tuple(
        getattr(
            net,
            "expected_input_shape",
            (3, facts["kwargs"]["input_size"], facts["kwargs"]["input_size"]),
        )
    )
    channels, size = int(shape[0]), int(shape[-1])
    y = masks = None
    class_names: list[str] | None = None
    if images:
        x, display = load_images(images, size, channels, normalize)
        data = "images: " + ", ".join(Path(f).name for f in images)
    else:
        from cnnviz.data import ShapesDataModule

        dm = ShapesDataModule(image_size=size, channels=channels, num_val=max(num_probe, 16))
        x, y = dm.probe(num_probe)
        masks = dm.probe_masks(num_probe)
        display = dm.denormalize(x).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        class_names = list(dm.class_names)
        data = "ShapesDataModule (validation images)"
    num_out = int(facts["kwargs"].get("num_classes", 0))
    if class_names is not None and len(class_names) != num_out:
        class_names = None
    target_dir = (
        Path(run_dir)
        if run_dir is not None
        else Path("runs") / (f"inspect-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    )
    store = RunStore(target_dir / "cnnviz")
    if store.exists():
        raise ValueError(
            f"`run_dir` {str(target_dir)!r} already holds a cnnviz store; choose a new --run-dir"
        )
    label = (
        "random weights"
        if checkpoint is None
        else (
            f"checkpoint (epoch {facts['epoch'] + 1})"
            if facts["epoch"] is not None
            else "checkpoint"
        )
    )
    event = {"event": "start", "label": label}
    at = {"epoch": int(facts["epoch"] or 0), "step": int(facts["step"] or 0)}
    store.update_run(
        status="running",
        model=name,
        module=None,
        data=data,
        class_names=class_names,
        input_shape=list(shape),
        num_parameters=sum(p.numel() for p in net.parameters()),
        layers=[i.describe() for i in list_layers(net)],
        epochs=facts["epoch"],
        settings={
            "inspect": {
                "checkpoint": None if checkpoint is None else str(checkpoint),
                "normalize": normalize,
                "methods": list(methods or []),
            }
        },
    )
    try:
        say(f"recording {name} on {len(x)} images -> {store.root}")
        store.write(
            "probe",
            {
                k: v
                for k, v in {"x": x, "y": y, "display": display, "masks": masks}.items()
                if v is not None
            },
            source="inspect",
            **at,
            meta={**event, "class_names": class_names, "shape": list(x.shape)},
        )
        _write_filters(store, net, event, at)
        _write_activations(store, net, x, event, at, class_names)
        say("receptive fields")
        problem = _write_receptive(store, net, shape, display, event, at)
        if methods:
            say(f"attributions ({', '.join(methods)})")
            _write_attributions(store, net, x, methods, event, at)
        store.update_run(status="finished", receptive_fields_note=problem)
    except BaseException as err:
        store.update_run(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    return build_report(target_dir, out, plotly_js=plotly_js, progress=progress)
