"""A model zoo: the smallest torchvision and timm families with every callback.

Each model — random weights, small inputs, in a user's own LightningModule with tuple batches —
trains a short fit with every cnnviz callback at its default settings (the time budget off, so
that every callback does its work; feature visualisation with few steps and small probes to keep
the suite fast), and the fit writes a report. The receptive fields of these models are checked
against the independent gradient measurement in tests/analysis/test_rf_zoo.py, and what each
conv is read after in tests/analysis/test_readout.py; the browser test at the end opens every
report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from cnnviz_test_helpers import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnviz.callbacks import (
    ActivationMaps,
    Attributions,
    FeatureVisualization,
    FilterWeights,
    ReceptiveFields,
    TopActivations,
)
from cnnviz.store import RunStore

pytestmark = pytest.mark.slow

CLASSES = 5


def _torchvision(name: str) -> nn.Module:
    import torchvision.models as tvm

    if name == "googlenet":
        return tvm.googlenet(num_classes=CLASSES, aux_logits=False, init_weights=False)
    return getattr(tvm, name)(num_classes=CLASSES)


def _timm(name: str) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=CLASSES)


#: (id, builder, image size)
ZOO = [
    ("tv/mobilenet_v3_small", lambda: _torchvision("mobilenet_v3_small"), 32),
    ("tv/efficientnet_b0", lambda: _torchvision("efficientnet_b0"), 32),
    ("tv/convnext_tiny", lambda: _torchvision("convnext_tiny"), 32),
    ("tv/regnet_x_400mf", lambda: _torchvision("regnet_x_400mf"), 32),
    ("tv/densenet121", lambda: _torchvision("densenet121"), 32),
    ("tv/shufflenet_v2_x0_5", lambda: _torchvision("shufflenet_v2_x0_5"), 32),
    ("tv/squeezenet1_0", lambda: _torchvision("squeezenet1_0"), 64),
    ("tv/googlenet", lambda: _torchvision("googlenet"), 64),
    ("timm/resnet18", lambda: _timm("resnet18"), 32),
    ("timm/efficientnet_b0", lambda: _timm("efficientnet_b0"), 32),
    ("timm/convnext_atto", lambda: _timm("convnext_atto"), 32),
    ("timm/regnetx_002", lambda: _timm("regnetx_002"), 32),
    ("timm/mobilenetv3_small_100", lambda: _timm("mobilenetv3_small_100"), 32),
]


class Classifier(pl.LightningModule):
    """What a user writes around a library backbone."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loaders(size: int) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, size, size, generator=g)
    y = torch.randint(0, CLASSES, (24,), generator=g)
    return (
        DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8, shuffle=True),
        DataLoader(TensorDataset(x[16:], y[16:]), batch_size=4),
    )


def every_callback() -> list[pl.Callback]:
    """Every callback at its defaults, but for the budget (off) and a few small sizes."""
    return [
        FilterWeights(budget=None),
        ActivationMaps(num_probe=2, budget=None),
        ReceptiveFields(num_probe=2, budget=None),
        TopActivations(budget=None),
        Attributions(num_probe=2, budget=None),
        FeatureVisualization(steps=4, max_channels=2, budget=None),
    ]


REPORTS: dict[str, Path] = {}


@pytest.mark.parametrize(("name", "build", "size"), ZOO, ids=[z[0] for z in ZOO])
def test_zoo_model_trains_with_every_callback_and_gets_a_report(
    tmp_path_factory, monkeypatch, name, build, size
) -> None:
    monkeypatch.setenv("CNNVIZ_AUTO_REPORT", "1")
    root = tmp_path_factory.mktemp(name.replace("/", "-"))
    torch.manual_seed(0)
    module = Classifier(build())
    trainer = make_trainer(
        root, every_callback(), max_epochs=1, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(module, *_loaders(size))
    assert trainer.state.finished
    store = RunStore(root / "cnnviz")
    assert store.run_info()["status"] == "finished"
    assert store.records("error") == []  # strict mode: a failure would have raised anyway
    for kind in ("filters", "activations", "layer_table", "erf", "topk", "attributions", "featvis"):
        assert store.records(kind), f"{name}: no {kind} records"
    # a deep network's default layers are its stage outputs, not every layer
    layers = {r.layer for r in store.records("activations")}
    assert 2 <= len(layers) <= 12, sorted(layers)
    # conv maps are read after their activation wherever one follows (the readout)
    stages = [r.meta["stage"] for r in store.records("activations") if r.meta.get("stage")]
    assert stages and all(s in ("activation", "norm", "raw") for s in stages)
    report = root / "report.html"
    assert report.is_file() and report.stat().st_size > 100_000
    REPORTS[name] = report


@pytest.mark.browser
def test_zoo_reports_open_without_console_errors() -> None:
    """Every zoo report opens in headless Chromium: no console error, no request, figures."""
    if len(REPORTS) < len(ZOO):
        pytest.skip("runs after the zoo fits (same session)")
    import os
    import shutil

    exe = os.environ.get("CNNVIZ_CHROMIUM", "/usr/bin/chromium")
    if not Path(exe).exists():
        exe = shutil.which("chromium") or ""
    if not exe:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing (CI installs it)")
        pytest.skip("Chromium not found (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=args)
        try:
            for name, path in REPORTS.items():
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                outside: list[str] = []
                page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else 0)
                page.on("pageerror", lambda err, e=errors: e.append(str(err)))

                def route(r: Any, o: list[str] = outside) -> None:
                    if r.request.url.startswith(("file:", "data:", "blob:")):
                        r.continue_()
                    else:
                        o.append(r.request.url)
                        r.abort()

                page.route("**/*", route)
                page.goto(path.as_uri())
                page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
                height = page.evaluate("document.body.scrollHeight")
                for y in range(0, int(height) + 900, 900):  # figures draw as they come into view
                    page.evaluate(f"window.scrollTo(0, {y})")
                    page.wait_for_timeout(5)
                page.wait_for_function(  # every figure placeholder drawn (or failed: an error)
                    "[...document.querySelectorAll('.fig')].every(e => e.dataset.state)",
                    timeout=60_000,
                )
                drawn = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
                page.close()
                assert errors == [], (name, errors[:5])
                assert outside == [], (name, outside[:5])
                assert drawn > 0, name
        finally:
            browser.close()
