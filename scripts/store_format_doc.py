"""Write docs/store-format.md from the record classes of cnnviz/store/records.py.

Usage:
    python scripts/store_format_doc.py           # rewrite the document
    python scripts/store_format_doc.py --check   # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnviz.store.doc import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "store-format.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the document is stale")
    ns = parser.parse_args(argv)
    text = render()
    current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    if ns.check:
        if current != text:
            print(f"{DOC} is stale: run python scripts/store_format_doc.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
