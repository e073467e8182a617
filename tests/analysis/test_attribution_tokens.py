"""Attributions per token through the embedding layer: known answers, Kim's CNN, guards."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from observer_state import ModelState, RngState
from torch import nn

from cnnviz.analysis.attribution import (
    METHODS,
    AttributionResult,
    AttributionUnavailable,
    attribute,
    attribute_many,
    available_methods,
    gradcam_layers,
)
from cnnviz.analysis.sanity import model_randomisation_check
from cnnviz.models import create

VOCAB = 12


class TokenSum(nn.Module):
    """Score of class 0 = the sum over tokens of a fixed per-token weight ``E[id] . v``; class 1
    is its negative. Token 0 is the pad token, with weight 0.

    Gradient x input, integrated gradients (pad baseline), DeepLift and one-token occlusion
    of token ``l`` for class 0 all equal ``weight[ids[l]]``; the gradient per embedding
    dimension is ``v``.
    """

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embedding = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.v = nn.Parameter(torch.randn(dim, generator=g))
        with torch.no_grad():
            self.embedding.weight.copy_(torch.randn(VOCAB, dim, generator=g))
            self.embedding.weight[0].zero_()

    @property
    def weight(self) -> torch.Tensor:
        return (self.embedding.weight @ self.v).detach()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s = (self.embedding(ids) @ self.v).sum(dim=1)
        return torch.stack([s, -s], dim=1)


def _ids(n: int = 3, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "method", ["input_x_gradient", "integrated_gradients", "deeplift", "occlusion"]
)
def test_known_answer_per_token(method: str) -> None:
    model = TokenSum()
    ids = _ids()
    res = attribute(model, ids, method, target=0)
    expected = model.weight[ids]
    assert res.attributions.shape == ids.shape and res.attributions.dtype == torch.float32
    assert torch.allclose(res.attributions, expected, atol=1e-5), (res.attributions, expected)
    assert res.input_kind == "tokens" and res.embedding == "embedding"
    assert res.settings["pad_id"] == 0
    # the other class: the negative
    other = attribute(model, ids, method, target=1).attributions
    assert torch.allclose(other, -expected, atol=1e-5)


def test_saliency_per_token_sums_the_absolute_gradient_over_the_embedding() -> None:
    model = TokenSum()
    ids = _ids()
    res = attribute(model, ids, "saliency", target=0)
    assert torch.allclose(
        res.attributions, torch.full(ids.shape, float(model.v.detach().abs().sum()))
    )
    signed = attribute(model, ids, "saliency", target=0, abs=False).attributions
    assert torch.allclose(signed, torch.full(ids.shape, float(model.v.detach().sum())))


def test_token_baselines_can_be_another_id() -> None:
    model = TokenSum()
    ids = _ids()
    res = attribute(model, ids, "integrated_gradients", target=0, baselines=3)
    assert torch.allclose(res.attributions, model.weight[ids] - model.weight[3], atol=1e-5)
    per_token = torch.full_like(ids, 5)
    res = attribute(model, ids, "occlusion", target=0, baselines=5)
    assert torch.allclose(res.attributions, model.weight[ids] - model.weight[per_token], atol=1e-5)
    with pytest.raises(TypeError, match="`baselines` for token inputs"):
        attribute(model, ids, "integrated_gradients", baselines=0.5)


def test_grad_cam_needs_a_conv_layer_and_guided_grad_cam_never_applies() -> None:
    model = TokenSum()
    ids = _ids()
    with pytest.raises(AttributionUnavailable, match="no conv or pooling layer"):
        attribute(model, ids, "grad_cam")
    with pytest.raises(AttributionUnavailable, match="token ids"):
        attribute(model, ids, "guided_grad_cam")
    results = attribute_many(model, ids)
    assert set(results) == set(METHODS)
    assert isinstance(results["guided_grad_cam"], str) and isinstance(results["grad_cam"], str)
    assert all(
        isinstance(results[m], AttributionResult)
        for m in available_methods("tokens")
        if m != "grad_cam"
    )


# ------------------------------------------------------------------------------ Kim's CNN
@pytest.fixture
def kim() -> nn.Module:
    torch.manual_seed(0)
    model = create("kim_cnn", vocab_size=60, embed_dim=8, input_size=32, num_maps=6)
    model.train()  # dropout active, as during training
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    return model


def _kim_ids(n: int = 4) -> torch.Tensor:
    ids = torch.randint(1, 60, (n, 32), generator=torch.Generator().manual_seed(3))
    ids[:, -5:] = 0  # padding at the end, as a tokeniser leaves it
    return ids


@pytest.mark.parametrize("method", available_methods("tokens"))
def test_kim_cnn_every_token_method(kim: nn.Module, method: str) -> None:
    ids = _kim_ids()
    state = ModelState(kim)
    rng = RngState()
    res = attribute(kim, ids, method, target="pred")
    rng.verify()
    state.verify()
    a = res.attributions
    assert a.shape == ids.shape and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    assert not a.requires_grad
    kim.eval()
    with torch.no_grad():
        assert torch.equal(res.targets, kim(ids).argmax(1))
    if method == "grad_cam":
        assert res.layer == "branches.window5.conv"


def test_kim_cnn_integrated_gradients_completeness(kim: nn.Module) -> None:
    kim.eval()
    ids = _kim_ids(3)
    res = attribute(kim, ids, "integrated_gradients", target=1, n_steps=300)
    with torch.no_grad():
        gap = kim(ids)[:, 1] - kim(torch.zeros_like(ids))[:, 1]
    assert torch.allclose(res.attributions.sum(dim=1), gap, atol=2e-3)


def test_kim_cnn_grad_cam_layers_are_the_one_dimensional_ones(kim: nn.Module) -> None:
    ids = _kim_ids()
    layers = gradcam_layers(kim, ids)
    assert layers[0] == "branches.window3.conv" and "embedding" not in layers
    res = attribute(kim, ids, "grad_cam", layer="branches.window3.conv", target=0)
    assert res.attributions.shape == ids.shape and (res.attributions >= 0).all()
    with pytest.raises(ValueError, match=r"`layer`.*branches.window3.conv"):
        attribute(kim, ids, "grad_cam", layer="fc")


def test_kim_cnn_works_inside_inference_mode(kim: nn.Module) -> None:
    ids = _kim_ids()
    outside = attribute(kim, ids, "integrated_gradients", target=0, n_steps=8)
    with torch.inference_mode():
        inside = attribute(kim, ids.clone(), "integrated_gradients", target=0, n_steps=8)
    assert torch.allclose(inside.attributions, outside.attributions, atol=1e-6)
    assert not inside.attributions.is_inference()


def test_kim_cnn_batching_does_not_change_results(kim: nn.Module) -> None:
    ids = _kim_ids(5)
    for method in ("integrated_gradients", "occlusion", "deeplift", "saliency"):
        whole = attribute(kim, ids, method, target=1, internal_batch_size=10_000)
        part = attribute(kim, ids, method, target=1, internal_batch_size=3)
        assert torch.allclose(part.attributions, whole.attributions, atol=1e-5), method


@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap"])
def test_kim_cnn_noise_methods_are_seeded(kim: nn.Module, method: str) -> None:
    ids = _kim_ids()
    a = attribute(kim, ids, method, target=0, seed=1).attributions
    b = attribute(kim, ids, method, target=0, seed=1).attributions
    c = attribute(kim, ids, method, target=0, seed=2).attributions
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_kim_cnn_randomisation_check_includes_the_embedding(kim: nn.Module) -> None:
    ids = _kim_ids()
    state = ModelState(kim)
    res = model_randomisation_check(kim, ids, "integrated_gradients", n_steps=8)
    state.verify()
    assert res.layers == [
        "fc",
        "branches.window5.conv",
        "branches.window4.conv",
        "branches.window3.conv",
        "embedding",
    ]
    assert res.per_image_abs.shape == (5, 4)


# ------------------------------------------------------------------------ finding the embedding
class TwoEmbeddings(nn.Module):
    """Token and position embeddings: only the token one consumes the ids."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Embedding(16, 4)
        self.tok = nn.Embedding(VOCAB, 4, padding_idx=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.fc((self.tok(ids) + self.pos(positions)).mean(dim=1))


def test_the_embedding_that_consumes_the_ids_is_found() -> None:
    model = TwoEmbeddings()
    res = attribute(model, _ids(), "integrated_gradients")
    assert res.embedding == "tok" and res.settings["pad_id"] == 2


def test_a_transformed_input_with_several_embeddings_needs_the_name() -> None:
    model = TwoEmbeddings()
    shifted = _ids() - 1  # the forward function shifts ids back: no embedding sees the input

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return model(ids + 1)

    with pytest.raises(ValueError, match=r"several nn.Embedding.*\(tok, pos\).*embedding="):
        attribute(model, shifted, "saliency", forward=forward)
    res = attribute(model, shifted, "saliency", forward=forward, embedding="tok")
    assert res.embedding == "tok" and res.attributions.shape == shifted.shape


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"embedding": "fc"}, ValueError, r"`embedding`: 'fc' is not an nn.Embedding.*pos, tok"),
        ({"embedding": 3}, TypeError, r"`embedding` must be the name"),
    ],
)
def test_embedding_argument_errors(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        attribute(TwoEmbeddings(), _ids(), "saliency", **kwargs)


def test_integer_inputs_without_an_embedding_are_refused_clearly() -> None:
    class Counts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(7, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(ids.float())

    with pytest.raises(ValueError, match=r"token ids.*no nn.Embedding"):
        attribute(Counts(), _ids(), "saliency")


def test_an_embedding_called_twice_allows_occlusion_only() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc((self.emb(ids) + self.emb(ids.flip(1))).mean(dim=1))

    model = Twice()
    with pytest.raises(AttributionUnavailable, match=r"'emb' runs 2 times"):
        attribute(model, _ids(), "integrated_gradients")
    assert attribute(model, _ids(), "occlusion").attributions.shape == (3, 7)


def test_token_attributions_of_a_bfloat16_model() -> None:
    model = TokenSum()
    ids = _ids()
    expected = model.weight[ids]
    res = attribute(model.to(torch.bfloat16), ids, "integrated_gradients", target=0)
    assert res.attributions.dtype == torch.float32
    assert torch.allclose(res.attributions, expected, atol=0.05, rtol=0.02)


class MaskedSum(TokenSum):
    """:class:`TokenSum` that also reads the ids outside the embedding (a padding mask), so the
    ids Captum's expanded batches run on must line up with the vectors row by row."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).float()
        s = ((self.embedding(ids) @ self.v) * mask).sum(dim=1)
        return torch.stack([s, -s], dim=1)


@pytest.mark.parametrize(
    "method", ["integrated_gradients", "deeplift", "smoothgrad", "gradient_shap", "saliency"]
)
def test_expanded_batches_keep_ids_and_vectors_aligned(method: str) -> None:
    model = MaskedSum()
    ids = _ids(4, 9)
    for row, pads in enumerate((0, 2, 5, 8)):  # a different amount of padding per sequence
        ids[row, 9 - pads :] = 0
    kwargs = {"n_steps": 4} if method == "integrated_gradients" else {}
    # passes of 8 sequences x k copies: Captum expands the batch (IG: 4 steps, SmoothGrad and
    # GradientShap: noisy copies, DeepLift: inputs and baselines)
    res = attribute(model, ids, method, target=0, **kwargs)
    a = res.attributions
    assert (a[ids == 0] == 0).all(), a  # no gradient reaches masked positions
    real = ids != 0
    if method in ("integrated_gradients", "deeplift"):
        assert torch.allclose(a[real], model.weight[ids][real], atol=1e-5)
    elif method in ("smoothgrad", "saliency"):
        assert torch.allclose(a[real], model.v.detach().abs().sum().expand(int(real.sum())))
    else:
        assert (a[real] != 0).all()
