"""The single-file HTML report of a run, built from its run store.

Example:
    >>> from cnnviz.report import build_report
    >>> build_report("runs/lenet5-shapes32-20250101-120000")
"""

from cnnviz.report.build import build_report
from cnnviz.report.data import ReportError, find_store

__all__ = ["ReportError", "build_report", "find_store"]
