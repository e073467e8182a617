import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnviz.cli import _rewrite_fit_args, main, run_fit
from cnnviz.store import RunStore

REPO = Path(__file__).resolve().parents[1]


def test_shorthands_are_rewritten():
    args = _rewrite_fit_args(["--model", "lenet5", "--data=go", "--trainer.max_epochs=1"])
    assert args[0] == "--model.model=lenet5"
    assert args[1].startswith("--data=cnnviz.data.") and args[1].endswith("GoDataModule")
    assert _rewrite_fit_args(["--model=vgg16"])[-1] == "--data=cnnviz.data.ShapesDataModule"


def test_unknown_model_and_data_names_list_the_choices():
    with pytest.raises(SystemExit, match=r"available: .*lenet5"):
        _rewrite_fit_args(["--model", "lenet7"])
    with pytest.raises(SystemExit, match=r"available: .*shapes"):
        _rewrite_fit_args(["--data", "imagenet"])


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "demo", "report", "layers"):
        assert command in out
    assert main(["nonsense"]) == 2


def _fit_args(tmp_path, *extra):
    return [
        "--model",
        "lenet5",
        "--data",
        "shapes",
        "--data.num_train=64",
        "--data.num_val=32",
        "--data.batch_size=32",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=false",
        f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]


def test_fit_with_the_watch_preset(tmp_path):
    cli = run_fit(_fit_args(tmp_path, "--config", str(REPO / "callbacks" / "watch.yaml")))
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    assert "FilterWeights" in names and "ActivationMaps" in names
    store = RunStore(Path(cli.trainer.log_dir) / "cnnviz")
    kinds = {r.kind for r in store.records()}
    assert {"filters", "activations", "probe", "predictions"} <= kinds
    # The data module's facts reached the model: 3 input channels, the data's classes.
    assert cli.model.net.expected_input_shape == (3, 32, 32)
    assert cli.model.hparams.data_info["num_classes"] == cli.datamodule.num_classes


def test_fit_with_the_all_preset_writes_every_kind_and_the_report(tmp_path):
    cli = run_fit(_fit_args(tmp_path, "--config", str(REPO / "callbacks" / "all.yaml")))
    names = [type(c).__name__ for c in cli.trainer.callbacks]
    for name in ("ReceptiveFields", "TopActivations", "Attributions", "FeatureVisualization"):
        assert name in names
    assert [n for n in names if n in ("Report", "FilterWeights")][-1] == "Report"
    store_dir = Path(cli.trainer.log_dir) / "cnnviz"
    kinds = {r.kind for r in RunStore(store_dir).records()}
    expected = {"filters", "activations", "layer_table", "erf", "topk", "attributions", "featvis"}
    assert expected <= kinds
    assert (store_dir.parent / "report.html").stat().st_size > 100_000


def test_fit_from_a_config_file(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"model": "convnetjs_cifar10", "optimizer": "adam", "lr": 0.001},
                "data": {
                    "class_path": "cnnviz.data.ShapesDataModule",
                    "init_args": {"num_train": 64, "num_val": 32},
                },
                "trainer": {
                    "max_epochs": 1,
                    "limit_train_batches": 1,
                    "limit_val_batches": 1,
                    "logger": False,
                    "enable_checkpointing": False,
                    "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path),
                },
            }
        )
    )
    cli = run_fit(["--config", str(config)])
    assert cli.model.model_name == "convnetjs_cifar10"
    assert cli.trainer.current_epoch == 1


@pytest.mark.parametrize(("model", "data"), [("kim_cnn", "sentences"), ("alphago_policy", "go")])
def test_every_task_trains_through_the_cli(tmp_path, model, data):
    cli = run_fit(
        [
            "--model",
            model,
            "--data",
            data,
            "--data.batch_size=8",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.trainer.global_step == 2


def test_console_script_demo_quick(tmp_path):
    """`cnnviz demo` on a reduced size, through the installed console script."""
    exe = Path(sys.executable).with_name("cnnviz")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cnnviz.cli"]
    proc = subprocess.run(
        [
            *cmd,
            "demo",
            "--epochs",
            "1",
            "--num-train",
            "256",
            "--num-val",
            "64",
            "--quick",
            "--out",
            str(tmp_path),
            "--no-live",
            "--accelerator",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run directory:" in proc.stdout
    run_dir = Path(proc.stdout.split("run directory:")[1].split()[0])
    assert (run_dir / "cnnviz" / "manifest.jsonl").exists()
    assert RunStore(run_dir / "cnnviz").records("filters")


def test_layers_command_prints_the_lecture_arithmetic(capsys):
    main(["layers", "--model", "alexnet"])
    out = capsys.readouterr().out
    assert "55" in out and "34,944" in out
