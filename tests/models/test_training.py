from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cnnviz.models import available, create, spec

# name -> (learning rate, input side or sequence length, extra kwargs). Small variants; the
# global-pool models train on their smallest accepted input to stay cheap. SGD, momentum 0.9,
# 5 steps (3 for the two deepest ResNets).
RECIPES: dict[str, tuple[float, int, dict]] = {
    "lenet5": (0.03, 32, {}),
    "alexnet": (0.03, 32, {}),
    "zfnet": (0.03, 32, {}),
    "vgg16": (0.03, 32, {}),
    "googlenet": (0.01, 32, {}),
    "resnet18": (0.01, 32, {}),
    "resnet34": (0.01, 16, {}),
    "resnet50": (0.003, 16, {}),
    "resnet101": (0.003, 16, {}),
    "resnet152": (0.003, 16, {}),
    "convnetjs_cifar10": (0.03, 32, {}),
    "alphago_policy": (0.03, 9, {}),
    "kim_cnn": (0.01, 32, {"vocab_size": 100, "embed_dim": 32}),
}


def test_every_model_has_a_recipe() -> None:
    assert sorted(RECIPES) == sorted(available())


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_few_sgd_steps_lower_the_loss(name: str) -> None:
    lr, side, kwargs = RECIPES[name]
    s = spec(name)
    torch.manual_seed(0)
    if s.task == "image":
        kwargs = {**kwargs, "num_classes": 10}
    model = create(name, input_size=s.small_input_size, **kwargs)
    model.train()
    batch = 4
    if s.task == "text":
        x = torch.randint(1, 100, (batch, side))
        classes = s.num_classes
    elif s.task == "go":
        x = torch.randn(batch, s.in_channels, side, side)
        classes = side * side
    else:
        x = torch.randn(batch, s.in_channels, side, side)
        classes = 10
    y = torch.randint(0, classes, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def loss_now() -> float:
        # Same dropout masks for both measurements; BatchNorm uses batch statistics.
        torch.manual_seed(1)
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    before = loss_now()
    for _ in range(3 if name in ("resnet101", "resnet152") else 5):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    after = loss_now()
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before - 0.02, f"{name}: loss {before:.4f} -> {after:.4f}"
