"""docs/store-format.md is generated from the record classes and must not go stale."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from cnnviz.store import KINDS, Header, Randomisation, TableRow
from cnnviz.store.doc import attribute_docs, render
from cnnviz.store.records import meta_fields
from cnnviz.store.schema import array_specs

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "store-format.md"


def test_the_format_document_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/store-format.md is stale: run `python scripts/store_format_doc.py`"
    )


def test_the_script_checks_and_writes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "store_format_doc.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("cls", [*KINDS.values(), Header, TableRow, Randomisation])
def test_every_field_is_documented(cls: type) -> None:
    docs = attribute_docs(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name != "header"]
    missing = [f.name for f in fields if not docs.get(f.name)]
    assert missing == [], f"{cls.__name__}: describe {missing} under Attributes:"
    assert set(docs) <= {f.name for f in dataclasses.fields(cls)}, "stale Attributes: entries"


def test_every_kind_appears_with_its_fields_and_arrays() -> None:
    text = render()
    for kind, cls in KINDS.items():
        assert f"### `{kind}` — `{cls.__name__}`" in text
        for f in meta_fields(cls):
            assert f"| `{f.name}` |" in text
        for _, spec in array_specs(cls):
            assert spec.name == "*" or f"| `{spec.name}` |" in text
