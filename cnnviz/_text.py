"""Text from files and models made safe to show: bidirectional-override characters neutralised.

A file name, layer name or class name can hold Unicode direction controls (U+202A–U+202E,
U+2066–U+2069, U+200E/U+200F) that make ``evil\u202egnp.exe`` display as ``evilexe.png``.
:func:`safe_text` replaces each with a visible tag such as ``[U+202E]``; HTML escaping is a
separate step (``cnnviz.report.html.esc`` does both).
"""

from __future__ import annotations

import re

__all__ = ["BIDI_CONTROLS", "safe_text"]

#: The direction controls that can reorder displayed text.
BIDI_CONTROLS = frozenset(
    [*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A)), "\u200e", "\u200f"]
)
_BIDI = re.compile("[" + "".join(sorted(BIDI_CONTROLS)) + "]")


def safe_text(value: object) -> str:
    """``str(value)`` with every bidirectional control shown as ``[U+XXXX]``.

    Args:
        value: Any value; ``None`` becomes ``""``.

    Returns:
        The text, safe to display next to other text (HTML escaping is still needed).

    Example:
        >>> safe_text("evil\u202egnp.exe")
        'evil[U+202E]gnp.exe'
    """
    text = "" if value is None else str(value)
    return _BIDI.sub(lambda m: f"[U+{ord(m.group()):04X}]", text)
