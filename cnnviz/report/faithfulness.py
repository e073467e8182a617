"""The attribution methods ranked by faithfulness (deletion/insertion, Petsiuk et al. 2018).

Part of the attributions section: a table of each method's deletion and insertion areas and
its score against random orderings (the random row with its spread), a curve figure per method
against the random curves, and the ranking at each event when it changed over training.
"""

from __future__ import annotations

import math
from typing import Any

from cnnviz.figures.faithfulness import faithfulness_figure
from cnnviz.report.data import RunData, pick_events
from cnnviz.report.html import Page, esc, table
from cnnviz.report.sections import guarded
from cnnviz.store.records import AttributionChecksRecord, Faithfulness, FaithfulnessCurves

__all__ = ["faithfulness_part", "faithfulness_records", "ranking"]

_BASELINES = {
    "zeros": "zero",
    "blur": "a blurred copy of the image",
    "mean": "the image's mean",
}


def faithfulness_records(data: RunData) -> list[AttributionChecksRecord]:
    """The ``attribution_checks`` records that hold deletion/insertion curves, in event order."""
    return [r for r in data.read(AttributionChecksRecord) if r.faithfulness is not None]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def ranking(f: Faithfulness) -> list[str]:
    """The methods, most faithful first (the record's ranking, else by score)."""
    order = [m for m in f.ranking if m in f.methods]
    rest = [m for m in f.methods if m not in order]
    rest.sort(key=lambda m: -(_num(f.methods[m].score) or -math.inf))
    return order + rest


def _fmt(value: Any) -> str:
    v = _num(value)
    return "n/a" if v is None else f"{v:.3f}"


def _verdict(score: float | None, spread: float | None) -> str:
    if score is None:
        return ""
    if score <= 0:
        return '<span class="chip bad">no better than random</span>'
    if spread is not None and score < spread:
        return '<span class="chip warn">below the random spread</span>'
    return ""


def _table(f: Faithfulness) -> str:
    spread = _num(f.random_spread)
    rows = []
    for i, m in enumerate(ranking(f), start=1):
        c = f.methods[m]
        score = _num(c.score)
        rows.append(
            [
                str(i),
                esc(m),
                _fmt(c.deletion_auc),
                _fmt(c.insertion_auc),
                "n/a" if score is None else f"{score:+.3f}",
                _verdict(score, spread),
            ]
        )
    if f.random is not None:
        pm = f" ± {spread:.3f}" if spread is not None else ""
        rows.append(
            [
                "",
                "<i>random ordering</i>",
                f"{_fmt(f.random.deletion_auc)}{pm}",
                _fmt(f.random.insertion_auc),
                "0 (by definition)",
                "",
            ]
        )
    return table(
        [
            "rank",
            "method",
            "deletion AUC (lower is better)",
            "insertion AUC (higher is better)",
            "score vs random",
            "",
        ],
        rows,
        numeric=[2, 3, 4],
        raw=range(6),
    )


def _definition(f: Faithfulness, label: str) -> str:
    removed = _BASELINES.get(f.deletion_baseline or "", f.deletion_baseline or "a baseline")
    blank = _BASELINES.get(f.insertion_baseline or "", f.insertion_baseline or "a blank image")
    what = "probability" if f.score == "probability" else f.score
    spread = _num(f.random_spread)
    spread_text = (
        f" The random row's ± {spread:.3f} is the spread of a random ordering's deletion AUC "
        "over random draws and probe images: a method whose score is below it may not beat a "
        "random map on a single image."
        if spread is not None
        else ""
    )
    return (
        "<p class=note>Faithfulness by deletion and insertion (Petsiuk et al., 2018), at "
        f"{esc(label)}: the probe images' pixels are removed (set to {esc(removed)}), most "
        f"attributed first, or inserted in that order into {esc(blank)}, and the explained "
        f"class's {esc(what)} is measured at each step. A faithful map makes it fall fast under "
        "deletion (a small area under the curve) and rise fast under insertion (a large area). "
        "Score: (random deletion AUC − deletion AUC) + (insertion AUC − random insertion AUC); "
        f"a random ordering scores 0.{esc(spread_text)}</p>"
    )


def _curves(c: FaithfulnessCurves) -> tuple[list[float], list[float]]:
    return list(c.deletion), list(c.insertion)


def _history(recs: list[AttributionChecksRecord], max_events: int) -> str:
    """The ranking at each event, when it changed over training (else ``""``)."""
    recs = [r for r in recs if r.faithfulness is not None and r.faithfulness.methods]
    orders = [tuple(ranking(r.faithfulness)) for r in recs if r.faithfulness is not None]
    if len(set(orders)) <= 1:
        return ""
    shown = pick_events(recs, max_events)
    ranked = [(r.label, ranking(r.faithfulness)) for r in shown if r.faithfulness is not None]
    width = max(len(order) for _, order in ranked)
    rows = [
        [esc(label), *[esc(m) for m in order], *[""] * (width - len(order))]
        for label, order in ranked
    ]
    return (
        "<h4>Ranking over training</h4><p class=note>The order changed between events (most "
        "faithful first):</p>"
        + table(["event", *[f"#{i}" for i in range(1, width + 1)]], rows, raw=range(width + 1))
    )


def faithfulness_part(data: RunData, page: Page, *, max_events: int = 12) -> list[str]:
    """The faithfulness ranking of the attribution methods (``[]`` when none was recorded)."""
    recs = faithfulness_records(data)
    if not recs:
        return []
    rec = recs[-1]
    f = rec.faithfulness
    if f is None or not f.methods:
        return []
    out = ["<h4>Which method is faithful to this model</h4>", _definition(f, rec.label), _table(f)]

    def figure() -> list[str]:
        order = ranking(f)
        fig = faithfulness_figure(
            list(f.fractions),
            {m: _curves(f.methods[m]) for m in order},
            _curves(f.random) if f.random is not None else None,
            scores={m: _num(f.methods[m].score) for m in order},
            score=f.score,
            title=f"Deletion and insertion curves at {rec.label}, against random orderings",
        )
        return [page.figure(fig)]

    out += guarded(data, "faithfulness curves", figure)
    out.append(_history(recs, max_events))
    return out
