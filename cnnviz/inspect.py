"""``cnnviz inspect``: the report of a trained model on some images, without a training run.

The model is built from the registry (and a checkpoint), the analysis functions run on it
directly (no Trainer), their results become typed records (the same builders the callbacks use,
:mod:`cnnviz.recording`) in a fresh run store, and the report is built from it. This module
needs torch; the report package does not import it.
"""

from __future__ import annotations

import os
import secrets
import stat
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cnnviz._text import safe_text
from cnnviz.recording import (
    activations_record,
    attributions_record,
    filters_record,
    layer_table_record,
    predictions_record,
    probe_record,
    receptive_field_record,
)
from cnnviz.store import RunStore

__all__ = [
    "DEFAULT_METHODS",
    "MAX_PIXELS",
    "image_size",
    "inspect_model",
    "load_images",
    "load_model",
]

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


#: Largest image (width × height) ``cnnviz inspect`` decodes; checked from the file header.
MAX_PIXELS = 25_000_000
#: Largest image file read, in bytes.
MAX_IMAGE_BYTES = 256 << 20


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a PNG, JPEG, GIF, BMP or WebP image from its header, or ``None``.

    Nothing is decoded: the size is read before deciding whether to decode.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            h = int.from_bytes(data[27:30], "little") + 1
            return w, h
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _read_image_file(p: Path) -> bytes:
    """The bytes of an image file: a regular file under the size cap (never blocks)."""
    shown = safe_text(p)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"`images`: {shown!r} does not exist") from None
    except OSError as err:
        raise ValueError(f"`images`: {shown!r} cannot be opened ({err.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"`images`: {shown!r} is not a regular file; pass image files")
        if st.st_size > MAX_IMAGE_BYTES:
            raise ValueError(
                f"`images`: {shown!r} is {st.st_size:,} bytes, over the limit of "
                f"{MAX_IMAGE_BYTES:,}; pass a smaller image"
            )
        chunks = []
        while chunk := os.read(fd, 1 << 22):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_images(
    files: Sequence[str | os.PathLike[str]],
    size: int,
    channels: int,
    normalize: Normalize,
    *,
    max_pixels: int = MAX_PIXELS,
) -> tuple[torch.Tensor, np.ndarray]:
    """Read image files, resize to ``size`` × ``size`` and normalise them.

    Each image's size is read from its header before anything is decoded; an image over
    ``max_pixels`` is refused.

    Returns:
        ``(model inputs [N, C, S, S], display images [N, S, S, C] in [0, 1])``.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If a file is not a regular file, not a PNG/JPEG/GIF/BMP/WebP image
            torchvision can decode, or larger than ``max_pixels``.
    """
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.functional import resize

    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"`max_pixels` must be a positive int; got {max_pixels!r}")
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    out = []
    for f in files:
        p = Path(f)
        shown = safe_text(p)
        data = _read_image_file(p)
        dims = image_size(data)
        if dims is None:
            raise ValueError(
                f"`images`: {shown!r} is not a PNG, JPEG, GIF, BMP or WebP image (its header "
                "was not recognised)"
            )
        w, h = dims
        if w < 1 or h < 1 or w * h > max_pixels:
            raise ValueError(
                f"`images`: {shown!r} is {w}×{h} = {w * h:,} pixels, over the limit of "
                f"{max_pixels:,}; resize it first, or raise the limit (--max-pixels)"
            )
        try:
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"`images`: {shown!r} is not a readable image ({err})") from err
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


def _record_filters(store: RunStore, model: nn.Module, header: dict[str, Any]) -> None:
    from cnnviz.analysis.layers import list_layers

    convs = list_layers(model, "conv")
    for n, info in enumerate(convs):
        module = model.get_submodule(info.name)
        rgb = n == 0 and info.dims == 2 and int(module.weight.shape[1]) == 3
        rec = filters_record(info.name, module, max_channels=64, max_in_channels=16, rgb=rgb)
        store.put(rec, layer=info.name, **header)


def _record_activations(
    store: RunStore,
    model: nn.Module,
    x: torch.Tensor,
    header: dict[str, Any],
    class_names: list[str] | None,
) -> None:
    from cnnviz.analysis.capture import LayerCapture
    from cnnviz.analysis.layers import list_layers

    names = [i.name for i in list_layers(model)]
    cap = LayerCapture(model, names, max_channels=16, max_size=32, post_activation=True)
    with cap:
        logits = model(x)
    store.put(predictions_record(logits, class_names=class_names), **header)
    for name in names:
        r = cap.results.get(name)
        if r is None:
            continue
        rec = activations_record(
            r,
            read_from=cap.sources[name],
            layer_type=type(model.get_submodule(name)).__name__,
        )
        store.put(rec, layer=name, **header)


def _record_receptive(
    store: RunStore,
    model: nn.Module,
    shape: tuple[int, ...],
    display: np.ndarray,
    header: dict[str, Any],
) -> str | None:
    from cnnviz.analysis.layer_table import layer_table
    from cnnviz.analysis.receptive_field import ReceptiveFieldError, receptive_fields

    problem = None
    try:
        rfs = receptive_fields(model, shape)
    except ReceptiveFieldError as err:  # a model the graph walk cannot model: say so in run.json
        rfs, problem = {}, str(err)
    for name, rf in rfs.items():
        if rf.ndim != 2 or len(rf.output_spatial) != 2:
            continue
        store.put(receptive_field_record(rf, image=display[0]), layer=name, **header)
    try:
        rows = layer_table(model, shape, receptive_field=False)
    except (TypeError, ValueError) as err:
        return problem or str(err)
    if rows:
        store.put(layer_table_record(rows, rfs), **header)
    return problem


def _record_attributions(
    store: RunStore,
    model: nn.Module,
    x: torch.Tensor,
    methods: Sequence[str],
    header: dict[str, Any],
) -> None:
    from cnnviz.analysis.attribution import attribute_many

    store.put(attributions_record(attribute_many(model, x, list(methods))), **header)


def _dissection_set(
    images: Sequence[str | os.PathLike[str]] | None,
    x: torch.Tensor,
    size: int,
    channels: int,
    count: int,
    label_maps: Sequence[str | os.PathLike[str]] | None,
    concept_names: Sequence[str] | None,
    max_pixels: int,
) -> Any:
    """The images and concepts to dissect on: Shapes validation images, or the user's maps."""
    from cnnviz.analysis.dissect import cache_concepts

    if label_maps:
        if not images or len(label_maps) != len(images):
            raise ValueError(
                "`label_maps` needs one label-map image per file of `images` (same order)"
            )
        if not concept_names:
            raise ValueError("`concept_names` must name the concept of each label value")
        from cnnviz.analysis.concepts import LabelMapConcepts

        maps = _load_label_maps(label_maps, size, max_pixels)
        source = LabelMapConcepts(list(concept_names))
        return cache_concepts([(x, maps)], source)
    if images or count < 1:
        return None
    from cnnviz.data import ShapesDataModule

    dm = ShapesDataModule(image_size=size, channels=channels, num_val=count)
    return cache_concepts(dm.dataset("val"))


def _load_label_maps(
    files: Sequence[str | os.PathLike[str]], size: int, max_pixels: int
) -> torch.Tensor:
    """Label-map images as integer maps ``[N, S, S]`` (nearest-neighbour resize)."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.functional import InterpolationMode, resize

    out = []
    for f in files:
        p = Path(f)
        data = _read_image_file(p)
        dims = image_size(data)
        if dims is None or dims[0] * dims[1] > max_pixels:
            raise ValueError(
                f"`label_maps`: {safe_text(p)!r} is not an image of at most {max_pixels:,} pixels"
            )
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.GRAY)
        img = resize(img, [size, size], interpolation=InterpolationMode.NEAREST)
        out.append(img[0].long())
    return torch.stack(out)


def _record_dissection(store: RunStore, net: nn.Module, data: Any, header: dict) -> None:
    """Dissect every conv layer, then the same on a randomised copy (the paper's control)."""
    from cnnviz.analysis.dissect import dissect_layers, randomised_copy
    from cnnviz.analysis.layers import list_layers
    from cnnviz.recording import dissection_record

    layers = [i.name for i in list_layers(net, "conv")]
    if not layers:
        return
    for name, result in dissect_layers(net, layers, data).items():
        store.put(dissection_record(result), layer=name, **header)
    control = randomised_copy(net, mode="reinit", seed=0)
    for name, result in dissect_layers(control, layers, data, control="reinit").items():
        store.put(
            dissection_record(result), layer=name, **{**header, "label": "randomised control"}
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
    max_pixels: int = MAX_PIXELS,
    dissect: int = 256,
    label_maps: Sequence[str | os.PathLike[str]] | None = None,
    concept_names: Sequence[str] | None = None,
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
        max_pixels: Largest image file (width × height) decoded.
        dissect: Network dissection (Bau et al. 2017) of every conv layer over this many Shapes
            validation images (when no ``images`` are given), with a randomised control; 0:
            none.
        label_maps: With ``images``: one label-map image per image (pixel value = concept
            index into ``concept_names``), to dissect the layers on the user's own concepts.
        concept_names: The concept of each label value (with ``label_maps``).

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
            print(f"cnnviz inspect: {safe_text(msg)}", file=sys.stderr, flush=True)

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
        x, display = load_images(images, size, channels, normalize, max_pixels=max_pixels)
        data = "images: " + ", ".join(safe_text(Path(f).name) for f in images)
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
    header = {
        "writer": "inspect",
        "event": "start",
        "label": label,
        "epoch": int(facts["epoch"] or 0),
        "step": int(facts["step"] or 0),
    }
    store.open_writer(f"inspect-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
    try:
        store.update_run(
            model=name,
            module=None,
            data=data,
            class_names=class_names,
            input_shape=list(shape),
            num_parameters=sum(p.numel() for p in net.parameters()),
            layers=[
                {"name": i.name, "type": i.type, "kind": i.kind, "describe": i.describe()}
                for i in list_layers(net)
            ],
            epochs=facts["epoch"],
            settings={
                "inspect": {
                    "checkpoint": None if checkpoint is None else str(checkpoint),
                    "normalize": normalize,
                    "methods": list(methods or []),
                }
            },
        )
        say(f"recording {name} on {len(x)} images -> {store.root}")
        store.put(
            probe_record(x, y=y, display=display, masks=masks, class_names=class_names), **header
        )
        _record_filters(store, net, header)
        _record_activations(store, net, x, header, class_names)
        say("receptive fields")
        problem = _record_receptive(store, net, shape, display, header)
        if methods:
            say(f"attributions ({', '.join(methods)})")
            _record_attributions(store, net, x, methods, header)
        dissection = _dissection_set(
            images, x, size, channels, dissect, label_maps, concept_names, max_pixels
        )
        if dissection is not None:
            say("concept dissection (and its randomised control)")
            _record_dissection(store, net, dissection, header)
        store.update_run(receptive_fields_note=problem)
        store.close(status="finished")
    except BaseException as err:
        store.close(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    return build_report(target_dir, out, plotly_js=plotly_js, progress=progress)
