"""The run store: a run's raw results on disk, the single source of truth for the report.

Layout under the store's root (``<trainer.log_dir>/cnnviz`` by default)::

    manifest.jsonl            one typed record per line, appended whole
    run.json                  run-level facts (model, data, settings, status, heartbeat)
    writer.lock               the writer lease of the fit writing the store (while it runs)
    arrays/<kind>/<id>.npz    the arrays of one record, written atomically

Writers use typed records (:mod:`cnnviz.store.records`) through :class:`RunStore`; the report
reads with :class:`StoreReader`, which treats the directory as untrusted input. The format is
described in ``docs/store-format.md``, generated from the record classes.

Example:
    >>> from cnnviz.store import FiltersRecord, RunStore, StoreReader
    >>> store = RunStore("runs/x/cnnviz").open_writer("run-1")
    >>> store.put(FiltersRecord(weight=w, norms=n, full_shape=(6, 3, 5, 5)),
    ...           writer="FilterWeights", layer="features.0", epoch=0, step=10)
    >>> StoreReader("runs/x/cnnviz").read(FiltersRecord)[0].weight.shape
    (6, 3, 5, 5)
"""

from cnnviz.store.files import Limits, StoreDataError, StoreWriteError, UnsafePathError
from cnnviz.store.history import copy_history
from cnnviz.store.lease import LEASE_FILE, LEASE_TIMEOUT, StoreBusyError
from cnnviz.store.reader import HEARTBEAT_STALE, MANIFEST, RUN_FILE, Note, StoreReader, StoreWarning
from cnnviz.store.records import (
    KINDS,
    ActivationsRecord,
    AttributionChecksRecord,
    AttributionsRecord,
    BudgetRecord,
    ConceptInfo,
    DissectionRecord,
    ErfRecord,
    ErrorRecord,
    FeatvisRecord,
    FiltersRecord,
    Header,
    LayerTableRecord,
    MetricsRecord,
    PredictionsRecord,
    ProbeRecord,
    Randomisation,
    ReceptiveFieldRecord,
    ResumeRecord,
    StoreRecord,
    TableRow,
    TopkRecord,
    record_class,
)
from cnnviz.store.schema import RecordError
from cnnviz.store.writer import Record, RunStore, open_writer

__all__ = [
    "HEARTBEAT_STALE",
    "KINDS",
    "LEASE_FILE",
    "LEASE_TIMEOUT",
    "MANIFEST",
    "RUN_FILE",
    "ActivationsRecord",
    "AttributionChecksRecord",
    "AttributionsRecord",
    "BudgetRecord",
    "ConceptInfo",
    "DissectionRecord",
    "ErfRecord",
    "ErrorRecord",
    "FeatvisRecord",
    "FiltersRecord",
    "Header",
    "LayerTableRecord",
    "Limits",
    "MetricsRecord",
    "Note",
    "PredictionsRecord",
    "ProbeRecord",
    "Randomisation",
    "ReceptiveFieldRecord",
    "Record",
    "RecordError",
    "ResumeRecord",
    "RunStore",
    "StoreBusyError",
    "StoreDataError",
    "StoreReader",
    "StoreRecord",
    "StoreWarning",
    "StoreWriteError",
    "TableRow",
    "TopkRecord",
    "UnsafePathError",
    "copy_history",
    "open_writer",
    "record_class",
]
