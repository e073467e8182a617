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
    MaskShareResult,
    RandomisationResult,
    describe_checks,
    mask_share,
    model_randomisation_check,
    object_mask_share,
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
    # The randomised weights now stand in on the model itself (no deep copy), so the model's
    # own hooks are set aside during the randomised passes: an observer sees the reference
    # pass only, never the randomised model.
    net = make_lenet()
    x = _images()
    attribute(net, x, "saliency")  # profile cached: the check below runs no profiling pass
    fired: list[torch.Tensor] = []
    handle = net[0].register_forward_hook(lambda m, i, o: fired.append(o.detach().clone()))
    try:
        model_randomisation_check(net, x, "saliency")
        assert len(fired) == 1  # the reference map's one forward pass
        assert hook_count(net) == 1  # and the observer's hook is back
        net.eval()
        with torch.no_grad():
            expected = net[0](x)
        assert torch.equal(fired[0], expected)  # computed with the trained weights
    finally:
        handle.remove()


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


@pytest.mark.slow
def test_trained_model_maps_beat_random_deletion_and_insertion(shapes_lenet: dict) -> None:
    from cnnviz.analysis.attribution import attribute_many
    from cnnviz.analysis.faithfulness import deletion_insertion

    x, y = shapes_lenet["x"][:16], shapes_lenet["y"][:16]
    methods = ["saliency", "integrated_gradients", "occlusion", "grad_cam"]
    results = attribute_many(shapes_lenet["model"], x, methods, target="label", labels=y)
    faith = deletion_insertion(shapes_lenet["model"], x, results, target="label", labels=y)
    scores = dict(faith.ranking())
    assert all(scores[m] > 0.1 for m in methods), scores
    assert faith.random.mean_deletion_auc > max(c.mean_deletion_auc for c in faith.methods.values())


# ------------------------------------------------------------- models as users have them
class _DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_lenet()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.net(batch["image"])}


def test_randomisation_through_a_forward_function_sees_the_random_weights() -> None:
    wrapped = _DictModel()
    x = _images()
    plain = model_randomisation_check(wrapped.net, x, "saliency", seed=2)
    res = model_randomisation_check(
        wrapped, x, "saliency", seed=2, forward=lambda t: wrapped({"image": t})["logits"]
    )
    assert res.layers == [f"net.{n}" for n in plain.layers]
    assert _same(res.per_image_abs, plain.per_image_abs)  # the same draws, the same maps
    assert res.spearman_abs[-1] < 0.9  # the maps did change: the forward saw random weights


def test_randomisation_restores_parameters_and_hooks_when_a_step_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cnnviz.analysis.sanity as sanity_mod

    net = make_bn_net()
    net.train()
    fired: list[int] = []
    handle = net[0].register_forward_hook(lambda *_: fired.append(1))
    params = {n: p for n, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    calls = [0]
    original = sanity_mod.attribute

    def flaky(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(sanity_mod, "attribute", flaky)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            model_randomisation_check(net, _images(), "saliency")
        assert {n: p for n, p in net.named_parameters()} == params  # the same objects
        for k, v in net.state_dict().items():
            assert torch.equal(v, state[k]), k
        fired.clear()
        net(_images())
        assert fired == [1]  # the observer's hook is back
    finally:
        handle.remove()
    assert hook_count(net) == 0 and all(m.training for m in net.modules())


# ------------------------------------------------------------------- mask share, described
def test_object_mask_share_says_whether_masks_existed() -> None:
    a = torch.zeros(2, 3, 4, 4)
    a[:, :, :2, :2] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    res = object_mask_share(a, masks)
    assert isinstance(res, MaskShareResult) and res.available and res.reason == ""
    assert res.mean_inside == 1.0 and res.mean_area == 0.25
    assert "100% of the positive attribution" in res.summary() and "25%" in res.summary()
    none = object_mask_share(a, None)
    assert not none.available and none.inside is None and math.isnan(none.mean_inside)
    assert none.summary() == "Mask share not computed: the data has no object masks."
    tokens = object_mask_share(torch.ones(2, 7), masks)
    assert not tokens.available and "image attributions" in tokens.reason
    with pytest.raises(ValueError, match="`masks`"):
        object_mask_share(a, torch.ones(3, 4, 4, dtype=torch.bool))


def test_describe_checks_mentions_masks_only_when_there_were_masks() -> None:
    without = describe_checks(masks_available=False)
    assert "Model randomisation" in without and "no object masks" in without
    assert "falls on the object" not in without and "Shapes" not in without
    with_masks = describe_checks(masks_available=True, faithfulness=True)
    assert "falls on the object" in with_masks and "Deletion and insertion" in with_masks
    only_masks = describe_checks(masks_available=True, randomisation=False)
    assert "randomisation" not in only_masks


def test_randomisation_max_steps_measures_at_spread_depths_of_the_full_cascade() -> None:
    """A deep cascade randomises every layer but compares the maps only at a few depths."""
    net = make_bn_net()
    x = torch.randn(4, 3, 16, 16)
    full = model_randomisation_check(net, x, "saliency", seed=3)
    assert len(full.layers) == 3  # conv, conv, linear: top first
    few = model_randomisation_check(net, x, "saliency", seed=3, max_steps=2)
    assert few.layers == [full.layers[0], full.layers[-1]]  # the first and the deepest step
    # the same cumulative randomisation at those depths: the same maps, the same correlations
    assert few.spearman_abs == pytest.approx([full.spearman_abs[0], full.spearman_abs[-1]])
    with pytest.raises(ValueError, match=r"`max_steps` must be a positive int or None"):
        model_randomisation_check(net, x, "saliency", max_steps=0)
