"""``cnnviz.analysis.sanity``: Spearman, mask share, the randomisation test, and faithfulness of
Grad-CAM and integrated gradients on LeNet-5 trained on the Shapes data."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cnnviz_test_helpers import make_bn_net, make_lenet, modes
from torch import nn

from cnnviz.analysis.attribution import attribute
from cnnviz.analysis.guard import hook_count
from cnnviz.analysis.sanity import (
    RandomisationResult,
    mask_share,
    model_randomisation_check,
    randomisable_layers,
    spearman,
)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------- spearman
def test_spearman_matches_scipy_documented_example() -> None:
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) -> 0.8207826816681233 (its docs;
    # the tie between the two 7s gets the average rank 3.5)
    r = spearman(torch.tensor([[1.0, 2, 3, 4, 5]]), torch.tensor([[5.0, 6, 7, 8, 7]]))
    assert r.dtype == torch.float64
    assert float(r[0]) == pytest.approx(0.8207826816681233, abs=1e-12)


def test_spearman_rows_monotone_reversed_constant() -> None:
    a = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    b = torch.stack([a[0].exp(), -a[1] * 3, torch.zeros_like(a[2])])
    r = spearman(a, b)
    assert float(r[0]) == pytest.approx(1.0)  # any increasing transform keeps the ranks
    assert float(r[1]) == pytest.approx(-1.0)
    assert math.isnan(float(r[2]))  # a constant map has no rank order
    with pytest.raises(ValueError, match="same shape"):
        spearman(a, b[:2])


# --------------------------------------------------------------------------------- mask share
def test_mask_share_by_hand() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True  # a quarter of the image
    a = torch.zeros(3, 2, 4, 4)
    a[0, :, :2, :2] = 1.0  # everything inside
    a[1] = 1.0  # uniform: scores the area share
    a[2, 0] = -1.0  # nothing positive
    a[2, 0, 3, 3] = 2.0  # (channel sum: -1 + 2 at one pixel outside) and negative elsewhere
    inside, area = mask_share(a, masks)
    assert area.tolist() == [0.25, 0.25, 0.25]
    assert float(inside[0]) == 1.0 and float(inside[1]) == pytest.approx(0.25)
    assert float(inside[2]) == 0.0
    inside_nan, _ = mask_share(-torch.ones(1, 4, 4), masks[:1, None])
    assert math.isnan(float(inside_nan[0]))


@pytest.mark.parametrize(
    ("attr_shape", "mask_shape", "match"),
    [((2, 3, 4, 4), (2, 5, 5), "`masks`"), ((2, 3, 4, 4), (3, 4, 4), "`masks`")],
)
def test_mask_share_shape_errors(attr_shape: tuple, mask_shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mask_share(torch.ones(attr_shape), torch.ones(mask_shape, dtype=torch.bool))


def test_mask_share_rejects_soft_masks() -> None:
    with pytest.raises(ValueError, match="0 and 1"):
        mask_share(torch.ones(1, 4, 4), torch.full((1, 4, 4), 0.5))


# ------------------------------------------------------------------- randomisation (tiny net)
def test_randomisation_leaves_the_model_alone_and_goes_top_down() -> None:
    net = make_bn_net()
    net.train()
    x = _images()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before_modes = modes(net)
    rng = torch.get_rng_state()
    np_rng = np.random.get_state()
    py_rng = random.getstate()
    res = model_randomisation_check(net, x, "gradient_shap", target=0)
    assert isinstance(res, RandomisationResult)
    assert res.layers == ["11", "4", "0"]  # linear, conv, conv: top (logits) first
    assert randomisable_layers(net, x) == ["0", "4", "11"]
    assert res.per_image_abs.shape == (3, 4) and res.per_image_signed.shape == (3, 4)
    assert len(res.spearman_abs) == 3 and all(-1 <= v <= 1 for v in res.spearman_abs)
    assert res.as_rows()[0]["layer"] == "11"
    assert torch.equal(res.targets, torch.zeros(4, dtype=torch.long))
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert modes(net) == before_modes and hook_count(net) == 0
    assert torch.equal(torch.get_rng_state(), rng)
    assert np.array_equal(np.random.get_state()[1], np_rng[1])
    assert random.getstate() == py_rng


def test_randomisation_is_seeded_and_cascading_differs_from_independent() -> None:
    net = make_lenet().eval()
    x = _images()
    a = model_randomisation_check(net, x, "saliency", seed=0)
    b = model_randomisation_check(net, x, "saliency", seed=0)
    c = model_randomisation_check(net, x, "saliency", seed=1)
    d = model_randomisation_check(net, x, "saliency", seed=0, cascading=False)
    assert _same(a.per_image_abs, b.per_image_abs)
    assert not _same(a.per_image_abs, c.per_image_abs)
    assert not d.cascading
    # the first step randomises the same (top) layer either way; later ones differ
    assert _same(a.per_image_abs[0], d.per_image_abs[0])
    assert not _same(a.per_image_abs[-1], d.per_image_abs[-1])
    # explaining a fixed class: targets come from the trained model
    with torch.no_grad():
        assert torch.equal(a.targets, net(x).argmax(1))


def test_randomisation_layers_argument() -> None:
    net = make_lenet()
    x = _images()
    res = model_randomisation_check(net, x, "grad_cam", layers=["0", "7"], layer="3")
    assert res.layers == ["7", "0"]  # always top first
    with pytest.raises(ValueError, match=r"`layers`.*0, 3, 7"):
        model_randomisation_check(net, x, "saliency", layers=["2"])
    with pytest.raises(TypeError, match="`layers`"):
        model_randomisation_check(net, x, "saliency", layers="7")
    with pytest.raises(ValueError, match="`method`"):
        model_randomisation_check(net, x, "nope")


def test_randomisation_copy_does_not_fire_other_observers_hooks() -> None:
    net = make_lenet()
    fired: list[nn.Module] = []
    handle = net[0].register_forward_hook(lambda m, *_: fired.append(m))
    try:
        model_randomisation_check(net, _images(), "saliency")
    finally:
        handle.remove()
    assert fired and all(m is net[0] for m in fired)  # never on the randomised copies


def test_randomisation_inside_inference_mode() -> None:
    net = make_lenet()
    with torch.inference_mode():
        x = _images()
        res = model_randomisation_check(net, x, "integrated_gradients", n_steps=8)
    assert len(res.layers) == 3 and not any(math.isnan(v) for v in res.spearman_signed)


# ------------------------------------------------------- faithfulness: LeNet-5 trained on Shapes
CLASSES = ["circle", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def shapes_lenet() -> dict[str, object]:
    """LeNet-5 (ReLU, average pooling) trained for 8 epochs on 2,000 Shapes images of 4 classes
    (a few seconds on one core), a copy of its initial (untrained) weights, and 64 validation
    images with their object masks."""
    from cnnviz.data.shapes import ShapesDataset
    from cnnviz.models import create

    start = time.perf_counter()
    train = ShapesDataset(2000, image_size=32, seed=0, split="train", classes=CLASSES)
    val = ShapesDataset(64, image_size=32, seed=0, split="val", classes=CLASSES)
    x_train = torch.stack([train.sample(i)[0] for i in range(len(train))])
    y_train = torch.stack([train.sample(i)[1] for i in range(len(train))])
    samples = [val.sample(i) for i in range(64)]
    x_val, y_val, m_val = (torch.stack(t) for t in zip(*samples, strict=True))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create("lenet5", in_channels=3, num_classes=4, input_size=32, activation="relu")
        untrained = create("lenet5", in_channels=3, num_classes=4, input_size=32, activation="relu")
        untrained.load_state_dict(model.state_dict())
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(8):
            perm = torch.randperm(len(x_train), generator=order)
            for i in range(0, len(perm), 64):
                idx = perm[i : i + 64]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval()
    untrained.eval()
    with torch.no_grad():
        accuracy = float((model(x_val).argmax(1) == y_val).float().mean())
    return {
        "model": model,
        "untrained": untrained,
        "x": x_val,
        "y": y_val,
        "masks": m_val,
        "accuracy": accuracy,
        "seconds": time.perf_counter() - start,
    }


def _share(model: nn.Module, data: dict, method: str) -> tuple[float, float]:
    res = attribute(model, data["x"], method, target="label", labels=data["y"])
    inside, area = mask_share(res.attributions, data["masks"])
    return float(inside.nanmean()), float(area.mean())


@pytest.mark.slow
def test_trained_lenet_learned_the_shapes(shapes_lenet: dict) -> None:
    assert shapes_lenet["accuracy"] >= 0.85


@pytest.mark.slow
@pytest.mark.parametrize(("method", "margin"), [("grad_cam", 0.08), ("integrated_gradients", 0.12)])
def test_trained_model_attribution_falls_on_the_object(
    shapes_lenet: dict, method: str, margin: float
) -> None:
    inside, area = _share(shapes_lenet["model"], shapes_lenet, method)
    assert inside > area + margin, (inside, area)


@pytest.mark.slow
def test_untrained_model_grad_cam_is_told_apart(shapes_lenet: dict) -> None:
    trained, area = _share(shapes_lenet["model"], shapes_lenet, "grad_cam")
    untrained, _ = _share(shapes_lenet["untrained"], shapes_lenet, "grad_cam")
    assert abs(untrained - area) < 0.06, (untrained, area)  # what a random map scores
    assert trained > untrained + 0.08, (trained, untrained)


@pytest.mark.slow
def test_randomising_weights_changes_grad_cam(shapes_lenet: dict) -> None:
    res = model_randomisation_check(
        shapes_lenet["model"],
        shapes_lenet["x"][:8],
        "grad_cam",
        target="label",
        labels=shapes_lenet["y"][:8],
    )
    assert res.layers == [
        "classifier.output",
        "classifier.f6",
        "features.c5",
        "features.c3",
        "features.c1",
    ]
    assert max(abs(v) for v in res.spearman_abs) < 0.5, res.spearman_abs
    assert abs(res.spearman_abs[-1]) < 0.3, res.spearman_abs


@pytest.mark.slow
def test_randomising_weights_changes_signed_integrated_gradients(shapes_lenet: dict) -> None:
    res = model_randomisation_check(
        shapes_lenet["model"],
        shapes_lenet["x"][:8],
        "integrated_gradients",
        target="label",
        labels=shapes_lenet["y"][:8],
        n_steps=16,
    )
    assert abs(res.spearman_signed[-1]) < 0.25, res.spearman_signed
    assert max(abs(v) for v in res.spearman_signed[2:]) < 0.3, res.spearman_signed
