"""What the run says about itself: callback errors, the time budget's cuts and its ledger.

- :func:`errors_section`: one card per callback that failed or turned itself off (``error``
  records), the traceback collapsed; the navigation marks it.
- :func:`left_out_card`: "What cnnviz left out": each callback's budget cuts (``budget``
  records) with the settings that record everything, and the ledger of ``run.json``'s
  ``budget`` (time spent per callback against the fit's training time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from cnnviz.report.data import RunData
from cnnviz.report.html import Page, esc, table
from cnnviz.store.records import BudgetRecord, ErrorRecord

__all__ = ["error_summary", "errors_section", "left_out_card", "owner_name"]

#: Errors listed per callback card (the newest; the count says how many there were).
MAX_ERRORS = 20


def owner_name(key: str) -> str:
    """A callback's class name from its ``state_key`` (``FilterWeights{...}``)."""
    return key.split("{", 1)[0].strip() or key


def _by_callback(errors: Sequence[ErrorRecord]) -> dict[str, list[ErrorRecord]]:
    out: dict[str, list[ErrorRecord]] = {}
    for e in errors:
        out.setdefault(e.callback, []).append(e)
    return out


def error_summary(data: RunData) -> tuple[int, int]:
    """``(errors, callbacks turned off)`` recorded by the run."""
    errors = data.read(ErrorRecord)
    off = len({e.callback for e in errors if e.exception == "Disabled"})
    return sum(e.exception != "Disabled" for e in errors), off


def _where(e: ErrorRecord) -> str:
    at = e.at or e.label
    parts = [f"at {at}" if at else "", f"layer {e.layer}" if e.layer else ""]
    return ", ".join(p for p in parts if p)


def errors_section(data: RunData, page: Page) -> bool:
    """An error card per callback that failed or turned itself off; ``True`` if any."""
    errors = data.read(ErrorRecord)
    if not errors:
        return False
    cards = []
    for callback, items in _by_callback(errors).items():
        off = [e for e in items if e.exception == "Disabled"]
        failed = [e for e in items if e.exception != "Disabled"]
        body = []
        if off:
            e = off[-1]
            body.append(
                f'<div class="error-card disabled"><h3>{esc(callback)} turned itself off</h3>'
                f'<p class="msg">{esc(e.message)}</p><p class="note">{esc(_where(e))}; '
                "training went on without it, and nothing after that point was recorded by "
                "it.</p></div>"
            )
        if failed:
            shown = failed[-MAX_ERRORS:]
            more = (
                f" (the newest {len(shown)} of {len(failed)} are listed)"
                if len(shown) < len(failed)
                else ""
            )
            rows = []
            for e in shown:
                trace = (
                    f"<details><summary>traceback</summary><pre>{esc(e.traceback)}</pre></details>"
                    if e.traceback
                    else ""
                )
                rows.append(
                    f'<p class="msg"><b>{esc(e.exception)}</b>: {esc(e.message)} '
                    f'<span class="muted">({esc(_where(e)) or "outside an event"})</span></p>'
                    + trace
                )
            body.append(
                f'<div class="error-card"><h3>{esc(callback)}: {len(failed)} '
                f"{'error' if len(failed) == 1 else 'errors'} (training went on){esc(more)}"
                f"</h3>{''.join(rows)}</div>"
            )
        cards.append("".join(body))
    count, off_count = error_summary(data)
    mark = "⚠ " + str(count + off_count)
    page.nav("errors", "Callback errors", mark=mark)
    page.add_section(
        "errors",
        "<h2>Callback errors</h2><p class=note>A cnnviz callback that fails at an event records "
        "the error and carries on at the next event; one that cannot work with this model turns "
        "itself off. Training was not affected. What these callbacks did not record is missing "
        "from the sections below.</p>" + "".join(cards),
    )
    return True


def _merged_cuts(budgets: Sequence[BudgetRecord]) -> dict[str, tuple[list[str], dict[str, Any]]]:
    out: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for b in budgets:
        cuts, settings = out.setdefault(b.callback, ([], {}))
        for d in b.decisions:
            if d not in cuts:
                cuts.append(d)
        settings.update(b.settings)
    return out


def _setting(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, default=str)


def _seconds(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _ledger(ledger: Mapping[str, Any]) -> str:
    train = _seconds(ledger.get("train_seconds"))
    share = _seconds(ledger.get("share"))
    total = _seconds(ledger.get("total_spent"))
    spent = ledger.get("spent") if isinstance(ledger.get("spent"), dict) else {}

    def share_of(s: float) -> str:
        if not train:
            return ""
        r = s / train
        return f"{r:.1%}" if r < 10 else f"{r:,.0f}× the training time"

    rows = []
    for key, v in sorted(spent.items(), key=lambda kv: -(_seconds(kv[1]) or 0)):
        s = _seconds(v)
        if s is None:
            continue
        rows.append([owner_name(str(key)), f"{s:.2f} s", share_of(s)])
    if total is not None:
        rows.append(["all of cnnviz", f"{total:.2f} s", share_of(total)])
    head = []
    if train is not None:
        head.append(f"the fit trained for {train:.1f} s")
    if share is not None:
        head.append(f"cnnviz may take {share:.0%} of the fit's time")
    text = "; ".join(head)
    return (
        f"<h3>Time ledger</h3><p class=note>{esc(text[:1].upper() + text[1:])}. Time spent "
        "by each callback (events, set-up, the report at the end), and its share of the "
        "training time:</p>" + table(["who", "time", "of training"], rows, numeric=[1, 2])
    )


def left_out_card(data: RunData) -> str:
    """The card of what cnnviz left out (budget cuts, how to get everything) and the ledger."""
    budgets = data.read(BudgetRecord)
    ledger = data.info.get("budget")
    if not budgets and not isinstance(ledger, dict):
        return ""
    body = ['<h3 id="left-out">What cnnviz left out</h3>']
    if budgets:
        body.append(
            "<p class=note>cnnviz keeps its own cost under a share of the fit's time (the "
            "budget). To stay within it, these callbacks recorded less than their defaults "
            "would:</p><ul class=note>"
        )
        for callback, (cuts, settings) in _merged_cuts(budgets).items():
            args = ", ".join(f"{k}={_setting(v)}" for k, v in settings.items() if k != "share")
            fix = (
                f" To record everything: <code>{esc(callback)}({esc(args)})</code>"
                " (or set the cut options explicitly)."
                if args
                else ""
            )
            body.append(f"<li><b>{esc(callback)}</b>: {esc('; '.join(cuts))}.{fix}</li>")
        body.append("</ul>")
    else:
        body.append(
            "<p class=note>Nothing was cut to save time: every callback recorded what its "
            "settings ask for.</p>"
        )
    if isinstance(ledger, dict):
        body.append(_ledger(ledger))
    return "".join(body)
