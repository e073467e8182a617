"""``cnnviz.analysis.faithfulness``: deletion and insertion curves against random orderings."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from cnnviz_test_helpers import make_bn_net, make_lenet
from observer_state import ModelState, RngState
from torch import nn

from cnnviz.analysis.attribution import attribute, attribute_many
from cnnviz.analysis.faithfulness import Curves, FaithfulnessResult, deletion_insertion

D = 3 * 8 * 8


def _linear(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Logits ``(w . x, -w . x)``: the exact contribution of a pixel is the sum over its
    channels of ``w * x``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w, -w]) * 0.2)
        model[1].bias.zero_()
    return model, w.reshape(3, 8, 8)


def _x(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_exact_linear_attribution_beats_random_and_inverted_does_worse() -> None:
    model, w = _linear()
    x = _x()
    exact = w * x
    res = deletion_insertion(
        model,
        x,
        {"exact": exact, "inverted": -exact},
        target=0,
        deletion_baseline="zeros",
        insertion_baseline="zeros",
    )
    assert isinstance(res, FaithfulnessResult) and set(res.methods) == {"exact", "inverted"}
    ex, inv, rnd = res.methods["exact"], res.methods["inverted"], res.random
    # per image: exact deletes the evidence first (lowest curve), inserts it first (highest);
    # on average by a clear margin (saturated probabilities leave less room on some images)
    assert (ex.deletion_auc <= rnd.deletion_auc).all()
    assert (ex.insertion_auc >= rnd.insertion_auc).all()
    assert (inv.deletion_auc >= rnd.deletion_auc).all()
    assert (inv.insertion_auc <= rnd.insertion_auc).all()
    assert ex.mean_deletion_auc < rnd.mean_deletion_auc - 0.2
    assert ex.mean_insertion_auc > rnd.mean_insertion_auc + 0.2
    assert inv.mean_deletion_auc > rnd.mean_deletion_auc + 0.2
    assert inv.mean_insertion_auc < rnd.mean_insertion_auc - 0.2
    assert res.method_score("exact") > 0.5 and res.method_score("inverted") < -0.5
    assert [m for m, _ in res.ranking()] == ["exact", "inverted"]
    # with a zero baseline the exact order is the best possible: every step removes the
    # largest remaining contribution, so the deletion curve lies below every other curve
    assert (ex.deletion <= rnd.deletion + 1e-9).all() and (ex.deletion <= inv.deletion).all()


def test_curves_shape_endpoints_and_auc() -> None:
    model, w = _linear()
    x = _x(4)
    res = deletion_insertion(model, x, w * x, target=0, steps=8, insertion_baseline="zeros")
    c = res.methods["attribution"]
    assert c.deletion.shape == (4, 9) and c.insertion.shape == (4, 9)
    assert torch.equal(res.fractions, torch.arange(9, dtype=torch.float64) / 8)
    with torch.no_grad():
        full = model(x).softmax(1)[:, 0].double()
        blank = model(torch.zeros_like(x)).softmax(1)[:, 0].double()
    for curves in (c, res.random):
        assert torch.allclose(curves.deletion[:, 0], full) and torch.allclose(
            curves.deletion[:, -1], blank
        )
        assert torch.allclose(curves.insertion[:, 0], blank)
        assert torch.allclose(curves.insertion[:, -1], full)
    # RISE's normalised area: trapezoid over fractions 0..1
    expected = (c.deletion[:, :-1] + c.deletion[:, 1:]).sum(1) / 2 / 8
    assert torch.allclose(c.deletion_auc, expected)
    assert res.random_deletion_auc.shape == (3, 4)
    assert torch.allclose(res.random.deletion_auc, res.random_deletion_auc.mean(0))
    rows = res.as_rows()
    assert [r["method"] for r in rows] == ["attribution", "random"] and rows[1]["score"] == 0.0


def test_deletion_equals_quantus_pixel_flipping_by_hand() -> None:
    """Quantus's PixelFlipping (features_in_step = P / steps, descending signed attribution,
    softmax) recomputed here in its own loop: our curve[1:] is its curve, and our AUC is
    ``(trapz(curve[1:], dx=1) + (p0 + p1) / 2) / steps``."""
    model, w = _linear(3)
    x = _x(2, seed=4)
    a = (w * x).sum(1)  # (N, H, W): one value per pixel
    steps = 16
    step = 64 // steps
    res = deletion_insertion(model, x, a, target=0, steps=steps)
    for i in range(2):
        order = torch.argsort(-a[i].flatten())
        xp = x[i].clone().reshape(3, -1)
        preds = []
        for k in range(steps):
            xp[:, order[k * step : (k + 1) * step]] = 0.0
            with torch.no_grad():
                preds.append(float(model(xp.reshape(1, 3, 8, 8)).softmax(1)[0, 0]))
        ours = res.methods["attribution"].deletion[i]
        assert torch.allclose(ours[1:], torch.tensor(preds, dtype=torch.float64), atol=1e-6)
        quantus_auc = torch.trapezoid(torch.tensor(preds, dtype=torch.float64))
        auc = (quantus_auc + (ours[0] + ours[1]) / 2) / steps
        assert float(res.methods["attribution"].deletion_auc[i]) == pytest.approx(float(auc))


class TokenSum(nn.Module):
    """Score of class 0 = the sum of a per-token weight (pad id 0 weighs nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 1, padding_idx=0)
        with torch.no_grad():
            self.embedding.weight[:, 0] = torch.linspace(-1.0, 1.5, 10)
            self.embedding.weight[0] = 0.0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s = self.embedding(ids).sum(dim=(1, 2))
        return torch.stack([s, -s], dim=1)


def test_token_deletion_replaces_tokens_with_the_pad_id() -> None:
    model = TokenSum()
    ids = torch.randint(1, 10, (5, 12), generator=torch.Generator().manual_seed(2))
    exact = model.embedding.weight[ids, 0].detach()
    res = deletion_insertion(model, ids, {"exact": exact, "inverted": -exact}, target=0, steps=4)
    assert res.settings["pad_id"] == 0
    with torch.no_grad():
        blank = model(torch.zeros_like(ids)).softmax(1)[:, 0].double()
    assert torch.allclose(res.methods["exact"].deletion[:, -1], blank)
    assert torch.allclose(res.methods["exact"].insertion[:, 0], blank)
    assert res.method_score("exact") > 0.3 > -0.3 > res.method_score("inverted")
    # the IG map of the same model ranks as the exact one
    ig = attribute(model, ids, "integrated_gradients", target=0)
    res_ig = deletion_insertion(model, ids, ig, target=0, steps=4)
    assert res_ig.method_score("integrated_gradients") == pytest.approx(
        res.method_score("exact"), abs=1e-9
    )
    other = deletion_insertion(model, ids, exact, target=0, steps=4, pad_id=3)
    assert other.settings["pad_id"] == 3


def test_guards_hold_and_inference_mode_works() -> None:
    net = make_bn_net()
    net.train()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    x = torch.randn(4, 3, 16, 16)
    maps = attribute_many(net, x, ["saliency", "grad_cam"])
    state = ModelState(net)
    rng = RngState()
    res = deletion_insertion(net, x, maps, steps=6)
    rng.verify()
    state.verify()
    with torch.inference_mode():
        inside = deletion_insertion(net, x.clone(), maps, steps=6)
    state.verify()
    for m in res.methods:
        assert torch.allclose(inside.methods[m].deletion, res.methods[m].deletion)
    # predictions come from the model in eval mode, not from dropout-perturbed passes
    net.eval()
    with torch.no_grad():
        assert torch.equal(res.targets, net(x).argmax(1))


def test_seeded_and_batch_size_independent() -> None:
    net = make_lenet().eval()
    x = torch.randn(5, 3, 16, 16)
    maps = attribute_many(net, x, ["saliency", "integrated_gradients"])
    a = deletion_insertion(net, x, maps, steps=8, seed=3)
    b = deletion_insertion(net, x, maps, steps=8, seed=3, memory_budget_mb=0.01)
    c = deletion_insertion(net, x, maps, steps=8, seed=4)
    assert torch.allclose(a.random.deletion, b.random.deletion)
    for m in a.methods:
        assert torch.allclose(a.methods[m].insertion, b.methods[m].insertion, atol=1e-6)
    assert not torch.equal(a.random.deletion, c.random.deletion)


def test_unavailable_methods_are_skipped_and_listed() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(3, 3, 16, 16)
    maps = attribute_many(mlp, x, ["saliency", "grad_cam"])
    res = deletion_insertion(mlp, x, maps, steps=4)
    assert list(res.methods) == ["saliency"] and "grad_cam" in res.skipped


def test_blur_baseline_keeps_the_mean_and_smooths() -> None:
    from cnnviz.analysis.faithfulness import _gaussian_blur

    x = torch.rand(2, 3, 16, 16)
    blurred = _gaussian_blur(x, 2.0)
    assert blurred.shape == x.shape
    assert blurred.std() < x.std() / 2
    assert torch.allclose(_gaussian_blur(torch.ones(1, 2, 5, 5), 3.0), torch.ones(1, 2, 5, 5))
    seq = torch.rand(2, 4, 20)
    assert _gaussian_blur(seq, 1.5).shape == seq.shape


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 1}, ValueError, r"`steps`"),
        ({"random_orderings": 0}, ValueError, r"`random_orderings`"),
        ({"score": "margin"}, ValueError, r"`score`"),
        ({"deletion_baseline": "grey"}, ValueError, r"`deletion_baseline`"),
        ({"insertion_baseline": torch.zeros(2, 2)}, ValueError, r"`insertion_baseline`.*broad"),
        ({"attributions": torch.zeros(6, 5, 5)}, ValueError, r"`attributions`\['attribution'\]"),
        ({"attributions": {"saliency": "unavailable"}}, ValueError, r"no maps"),
        ({"attributions": [1, 2]}, TypeError, r"`attributions`"),
        ({"target": 5}, ValueError, r"`target`"),
        ({"blur_sigma": -1.0}, ValueError, r"`blur_sigma`"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    model, w = _linear()
    x = _x()
    call: dict[str, Any] = {"attributions": w * x}
    call.update(kwargs)
    with pytest.raises(error, match=match):
        deletion_insertion(model, x, call.pop("attributions"), **call)


def test_curves_type_reports_means() -> None:
    c = Curves(
        deletion=torch.zeros(2, 3),
        insertion=torch.ones(2, 3),
        deletion_auc=torch.tensor([0.2, 0.4]),
        insertion_auc=torch.tensor([0.6, 0.8]),
    )
    assert c.mean_deletion_auc == pytest.approx(0.3) and c.mean_insertion_auc == pytest.approx(0.7)
