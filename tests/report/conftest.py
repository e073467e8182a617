"""Fixtures of the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_helpers import write_full_run


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    """A run directory whose store holds every record kind."""
    run = tmp_path / "run"
    write_full_run(run)
    return run
