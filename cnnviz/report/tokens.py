"""Token attributions as coloured text: one line per probe sentence, one block per method.

Each token's background is its attribution relative to the largest absolute one in its sentence
(red: evidence for the explained class, blue: against it); the exact value is in the hover
text. Tokens are words when the probe record has a vocabulary, else ids; padding tokens
(``<pad>``) at the end of a sentence are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cnnviz.figures.attributions import relative_maps
from cnnviz.report.html import esc

__all__ = ["token_colour", "token_text", "tokens_html"]

_RED = (178, 24, 43)
_BLUE = (33, 102, 172)
PAD_WORDS = ("<pad>", "[PAD]", "<PAD>")


def token_colour(value: float | None) -> str:
    """A CSS background for a relative attribution in [-1, 1] (transparent for none/NaN)."""
    if value is None or not np.isfinite(value) or value == 0:
        return "transparent"
    r, g, b = _RED if value > 0 else _BLUE
    return f"rgba({r},{g},{b},{min(1.0, abs(float(value))) * 0.85:.2f})"


def token_text(ids: Sequence[int], vocabulary: Sequence[str] | None) -> list[str]:
    """Each token as a word (``vocabulary[id]``) or, without a vocabulary, as ``#id``."""
    out = []
    for t in ids:
        t = int(t)
        if vocabulary is not None and 0 <= t < len(vocabulary):
            out.append(str(vocabulary[t]))
        else:
            out.append(f"#{t}")
    return out


def _trim(words: list[str], vocabulary: Sequence[str] | None) -> int:
    """How many tokens to show: trailing padding words are dropped."""
    n = len(words)
    if vocabulary is None:
        return n
    while n > 1 and words[n - 1] in PAD_WORDS:
        n -= 1
    return n


def tokens_html(
    maps: Mapping[str, np.ndarray],
    ids: np.ndarray | None,
    *,
    vocabulary: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
) -> str:
    """Coloured tokens per method and probe sentence.

    Args:
        maps: Method to ``[N, L]`` attributions per token.
        ids: ``[N, L]`` token ids of the probe sentences (``None``: positions are shown).
        vocabulary: Token id to word.
        row_labels: One label per sentence (``#0 positive → positive``).

    Returns:
        HTML (every string escaped).

    Raises:
        ValueError: If a map is not ``[N, L]`` or does not fit ``ids``.
    """
    blocks = []
    for method, raw in maps.items():
        a = np.asarray(raw, dtype=np.float32)
        if a.ndim != 2:
            raise ValueError(f"token attributions of {method!r} must be [N, L]; got {a.shape}")
        if ids is not None and np.shape(ids) != a.shape:
            raise ValueError(
                f"token attributions of {method!r} have shape {a.shape}; the probe's ids "
                f"{np.shape(ids)}"
            )
        rel = relative_maps(a)
        rows = []
        for i in range(a.shape[0]):
            words = (
                token_text(ids[i], vocabulary)
                if ids is not None
                else [str(j) for j in range(a.shape[1])]
            )
            n = _trim(words, vocabulary) if ids is not None else len(words)
            spans = []
            for j in range(n):
                v = float(rel[i, j])
                raw_v = float(a[i, j])
                fg = "#fff" if np.isfinite(v) and abs(v) > 0.6 else "inherit"
                hover = f"{words[j]}: {raw_v:.4g} ({v:+.0%} of the sentence's largest)"
                spans.append(
                    f'<span class="tok" style="background:{token_colour(v)};color:{fg}" '
                    f'title="{esc(hover)}">{esc(words[j])}</span>'
                )
            pads = len(words) - n
            cut = (
                f' <span class="muted">… {pads} padding token{"s" if pads > 1 else ""}</span>'
                if pads
                else ""
            )
            label = row_labels[i] if row_labels is not None and i < len(row_labels) else f"#{i}"
            rows.append(
                f'<div class="row"><div class="who">{esc(label)}</div>'
                f'<div class="seq">{"".join(spans)}{cut}</div></div>'
            )
        blocks.append(f"<h4>{esc(method)}</h4>{''.join(rows)}")
    legend = (
        '<p class="note">against <span class="scale-bar"></span> for the explained class '
        "(each sentence scaled by its largest absolute attribution; hover a token for its "
        "value)</p>"
    )
    return f'<div class="tokens">{legend}{"".join(blocks)}</div>'
