"""``cnnviz report`` and ``cnnviz inspect``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from report_helpers import figures, titles

from cnnviz import models
from cnnviz.cli import main
from cnnviz.figures.images import png_bytes
from cnnviz.report.cli import run_inspect, run_report
from cnnviz.store import RunStore


def test_report_command(full_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.html"
    assert main(["report", str(full_run), "-o", str(out), "--cdn", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert captured.err == ""
    assert "cdn.plot.ly" in out.read_text()
    path = run_report([str(full_run.parent)])  # a parent holding one run
    assert path == full_run / "report.html"
    assert "[1/10] overview" in capsys.readouterr().err


def test_report_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        run_report([str(tmp_path / "missing")])
    assert err.value.code == 2
    assert "cnnviz report: error: `path`" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        run_report([str(tmp_path)])
    assert err.value.code == 2
    assert "no cnnviz run store" in capsys.readouterr().err
    RunStore(tmp_path / "run" / "cnnviz").update_run(status="failed", error="x")
    with pytest.raises(SystemExit) as err:
        run_report([str(tmp_path / "run"), "-q"])
    assert err.value.code == 1
    msg = capsys.readouterr().err
    assert "holds no cnnviz records" in msg and "wrote a page that says so" in msg
    assert "no cnnviz data" in (tmp_path / "run" / "report.html").read_text()
    with pytest.raises(SystemExit):
        run_report([str(tmp_path / "run"), "--max-events", "0"])


def _checkpoint(tmp_path: Path) -> Path:
    net = models.create("lenet5", num_classes=9, in_channels=3, input_size=32)
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {
            "model": "lenet5",
            "model_kwargs": {},
            "data_info": {"num_classes": 9, "in_channels": 3, "input_size": 32},
        },
        "epoch": 4,
        "global_step": 100,
    }
    path = tmp_path / "m.ckpt"
    torch.save(ckpt, path)
    return path


def test_inspect_with_a_lightning_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "insp"
    out = run_inspect(
        [
            "--checkpoint",
            str(_checkpoint(tmp_path)),
            "--run-dir",
            str(run),
            "--methods",
            "saliency",
            "grad_cam",
            "--num-probe",
            "4",
            "-q",
        ]
    )
    assert out == run / "report.html"
    store = RunStore(run / "cnnviz")
    info = store.run_info()
    assert info["status"] == "finished" and info["model"] == "lenet5"
    assert info["input_shape"] == [3, 32, 32]
    kinds = {r.kind for r in store}
    assert {
        "probe",
        "filters",
        "activations",
        "predictions",
        "receptive_field",
        "attributions",
    } <= kinds
    rec = store.records("filters")[0]
    assert rec.meta["label"] == "checkpoint (epoch 5)" and rec.meta["rgb"] is True
    assert rec.meta["bias"] is True
    att = store.records("attributions")[0]
    assert set(att.meta["methods"]) == {"saliency", "grad_cam"}
    assert store.load(att)["saliency"].shape == (4, 32, 32)
    html = out.read_text()
    t = " ".join(titles(figures(html)))
    assert "Input attributions" in t
    # LeNet's C1 on a 32 px image: 28×28 units; units 13 and 14 are equally central and the
    # one rule of cnnviz.recording.centre_unit (callbacks and inspect alike) takes the lower
    assert "the input region unit (13, 13) sees" in html
    assert "layer_table" in kinds
    rows = store.records("layer_table")[0].meta["rows"]  # the untyped view of the record
    c1 = next(r for r in rows if r["name"] == "features.c1")
    assert c1["output_shape"] == [6, 28, 28] and c1["params"] == 456
    assert c1["kernel"] == [5, 5] and c1["rf_size"] == [5, 5]
    assert "456" in c1["weights_arithmetic"] and c1["weights_arithmetic"] in html


def test_inspect_with_image_files_and_a_state_dict(tmp_path: Path) -> None:
    net = models.create("lenet5", num_classes=4, in_channels=3, input_size=32)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    files = []
    for i in range(2):
        img = np.zeros((40, 50, 3), dtype=np.uint8)
        img[10:30, 10 + i * 10 : 30 + i * 10] = 255
        f = tmp_path / f"img{i}.png"
        f.write_bytes(png_bytes(img))
        files.append(str(f))
    out = run_inspect(
        [
            "--model",
            "lenet5",
            "--checkpoint",
            str(tmp_path / "w.pt"),
            "--num-classes",
            "4",
            "--input-size",
            "32",
            "--images",
            *files,
            "--methods",
            "--run-dir",
            str(tmp_path / "r"),
            "-q",
        ]
    )
    store = RunStore(tmp_path / "r" / "cnnviz")
    probe = store.load(store.records("probe")[0])
    assert probe["x"].shape == (2, 3, 32, 32) and probe["display"].shape == (2, 32, 32, 3)
    assert "attributions" not in {r.kind for r in store}
    assert store.run_info()["data"] == "images: img0.png, img1.png"
    assert out.exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "nope"], "Unknown model `name` 'nope'"),
        (["--model", "kim_cnn"], "needs an image model"),
        (["--model", "lenet5", "--checkpoint", "missing.ckpt"], "`checkpoint` .* does not exist"),
        (["--model", "lenet5", "--images", "missing.png"], "`images`: .* does not exist"),
        (["--model", "alexnet", "--checkpoint", "{ckpt}"], "holds 'lenet5'; pass --model lenet5"),
        (
            ["--model", "lenet5", "--checkpoint", "{state}", "--num-classes", "3"],
            "do not fit lenet5 .* set --num-classes",
        ),
        ([], "`model` is required"),
    ],
)
def test_inspect_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], match: str
) -> None:
    net = models.create("lenet5", num_classes=9, in_channels=3, input_size=32)
    torch.save(net.state_dict(), tmp_path / "state.pt")
    args = [a.format(ckpt=_checkpoint(tmp_path), state=tmp_path / "state.pt") for a in args]
    with pytest.raises(SystemExit) as err:
        run_inspect([*args, "--run-dir", str(tmp_path / "r"), "-q", "--methods"])
    assert err.value.code == 2
    import re

    assert re.search(match, capsys.readouterr().err)


def test_inspect_refuses_an_existing_store(full_run: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run_inspect(["--model", "lenet5", "--run-dir", str(full_run), "-q", "--methods"])
    assert "already holds a cnnviz store" in capsys.readouterr().err
