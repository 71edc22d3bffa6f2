"""ClickHouse storage: connection by URI, versioned migrations, row layout, idempotent writes, the sink's
batch ledger and MLflow's experiment records. Every statement that writes to ClickHouse lives here."""

from tracehouse.schemas.errors import StoreURIError

from ._experiments import DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME, Experiment, Experiments, experiment_id_for
from ._ledger import LEDGER_TABLE, MARKS_TABLE, Ledger
from ._migrations import MIGRATIONS, Migration, current_version, latest_version, migrate
from ._reconcile import ReconcileReport, begin_epoch, partition_watermarks, reconcile, version_at
from ._retention import Retention, current_retention, set_retention
from ._rows import (
    SESSION_COLUMNS,
    TABLES,
    USER_TRACE_COLUMNS,
    RowBatch,
    add_event_rows,
    session_row,
    user_trace_row,
    value_text,
)
from ._state import STATE_TABLE, EpochRecord, StateTable
from ._store import Store
from ._writer import drop_stored, existing_trace_ids, write_batch

__all__ = [
    "DEFAULT_EXPERIMENT_ID",
    "DEFAULT_EXPERIMENT_NAME",
    "LEDGER_TABLE",
    "MARKS_TABLE",
    "MIGRATIONS",
    "SESSION_COLUMNS",
    "STATE_TABLE",
    "TABLES",
    "USER_TRACE_COLUMNS",
    "EpochRecord",
    "Experiment",
    "Experiments",
    "Ledger",
    "Migration",
    "ReconcileReport",
    "Retention",
    "RowBatch",
    "StateTable",
    "Store",
    "StoreURIError",
    "add_event_rows",
    "begin_epoch",
    "current_retention",
    "current_version",
    "drop_stored",
    "existing_trace_ids",
    "experiment_id_for",
    "latest_version",
    "migrate",
    "partition_watermarks",
    "reconcile",
    "session_row",
    "set_retention",
    "user_trace_row",
    "value_text",
    "version_at",
    "write_batch",
]
