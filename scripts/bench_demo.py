"""Time `cnnviz demo` (LeNet-5 on Shapes with every callback) and report its validation accuracy.

Target (issue 2): at least 95% validation accuracy in under 3 minutes of wall time on 2 CPU cores.

    python scripts/bench_demo.py [--epochs 8] [--out /tmp/cnnviz-bench]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from cnnviz.demo import demo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="/tmp/cnnviz-bench-demo")
    p.add_argument("--no-report", dest="report", action="store_false")
    ns = p.parse_args()
    start = time.perf_counter()
    run_dir = demo(epochs=ns.epochs, out=ns.out, accelerator="cpu", report=ns.report)
    wall = time.perf_counter() - start
    with open(Path(run_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    accs = [(int(r["epoch"]), float(r["val/acc"])) for r in rows if r.get("val/acc")]
    print("\nepoch  val/acc")
    for epoch, acc in accs:
        print(f"{epoch + 1:5d}  {acc:.4f}")
    first = next((e + 1 for e, a in accs if a >= 0.95), None)
    best = max(a for _, a in accs)
    print(
        f"\nwall time {wall:.1f} s (target < 180 s); "
        f"final val/acc {accs[-1][1]:.4f}; best {best:.4f}"
    )
    print(
        f"first epoch >= 95%: {first}; "
        f"verdict: {'PASS' if accs[-1][1] >= 0.95 and wall < 180 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
