"""The ``cnnviz`` command.

- ``cnnviz fit --model NAME --data NAME [LightningCLI options]``: train a case-study model
  (LightningCLI underneath: ``--config``, ``--print_config``, ``--trainer.*``, ``--model.*``,
  ``--data.*`` all work). ``--model NAME`` and ``--data NAME`` are shorthands for
  ``--model.model NAME`` and ``--data cnnviz.data.<DataModule>``.
- ``cnnviz demo``: the main job — LeNet-5 on the built-in Shapes data with every cnnviz callback;
  prints the run directory.
- ``cnnviz layers --model NAME``: the lecture's layer table of a model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _rewrite_fit_args(argv: list[str]) -> list[str]:
    """Turn ``--model NAME`` / ``--data NAME`` into LightningCLI's full forms."""
    from cnnviz import data, models

    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in ("--model", "--data") and not eq and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
            eq = "="
        if key == "--model" and eq and not value.startswith(("{", "[")) and "." not in value:
            if value not in models.available():
                raise SystemExit(
                    f"cnnviz fit: unknown model {value!r}; "
                    f"available: {', '.join(models.available())}"
                )
            out.append(f"--model.model={value}")
        elif key == "--data" and eq and not value.startswith(("{", "[")) and "." not in value:
            if value not in data.available():
                raise SystemExit(
                    f"cnnviz fit: unknown data {value!r}; available: {', '.join(data.available())}"
                )
            cls = data.DATAMODULES[value]
            out.append(f"--data={cls.__module__}.{cls.__qualname__}")
        else:
            out.append(arg)
        i += 1
    if not any(a == "--data" or a.startswith(("--data=", "--data.")) for a in out) and not any(
        a.startswith("--config") or a == "-c" for a in out
    ):
        out.append("--data=cnnviz.data.ShapesDataModule")
    return out


def run_fit(argv: Sequence[str], *, run: bool = True) -> Any:
    """Run ``cnnviz fit`` with ``argv`` (without the ``fit`` word); returns the LightningCLI."""
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.core import LightningDataModule

    from cnnviz.module import CaseStudyModule

    class CnnvizCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.link_arguments("data.model_kwargs", "model.data_info", apply_on="instantiate")
            parser.set_defaults({"trainer.default_root_dir": "runs"})

    args = _rewrite_fit_args(list(argv))
    return CnnvizCLI(
        CaseStudyModule,
        LightningDataModule,
        subclass_mode_data=True,
        args=["fit", *args] if run else args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def run_demo(argv: Sequence[str]) -> Path:
    """Run ``cnnviz demo``; returns the run directory."""
    from cnnviz.demo import demo, demo_parser

    ns = demo_parser().parse_args(list(argv))
    return demo(**vars(ns))


def run_layers(argv: Sequence[str]) -> None:
    """Print the layer table of a model."""
    from cnnviz import models
    from cnnviz.analysis.layer_table import format_layer_table, layer_table

    p = argparse.ArgumentParser(prog="cnnviz layers", description="The lecture's layer table.")
    p.add_argument("--model", required=True, choices=models.available())
    p.add_argument("--input-size", type=int, default=None, help="input size (default canonical)")
    ns = p.parse_args(list(argv))
    kwargs = {} if ns.input_size is None else {"input_size": ns.input_size}
    net = models.create(ns.model, **kwargs)
    print(format_layer_table(layer_table(net, net.expected_input_shape)))


COMMANDS = {
    "fit": "train a model (LightningCLI; see `cnnviz fit --help`)",
    "demo": "train LeNet-5 on Shapes with every callback and write its run directory",
    "layers": "print the lecture's layer table of a model",
    "report": "build the HTML report of a run directory",
    "inspect": "write a report for a trained model and some images",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnnviz`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: cnnviz {" + ",".join(COMMANDS) + "} ...\n")
        for name, text in COMMANDS.items():
            print(f"  {name:8s} {text}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "fit":
        run_fit(rest)
    elif command == "demo":
        run_demo(rest)
    elif command == "layers":
        run_layers(rest)
    elif command in ("report", "inspect"):
        from cnnviz.report.cli import run_inspect, run_report

        (run_report if command == "report" else run_inspect)(rest)
    else:
        print(
            f"cnnviz: unknown command {command!r}; choose from {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
