"""ClickHouse storage: connection by URI, versioned migrations, row layout and idempotent writes."""

from ._migrations import MIGRATIONS, Migration, current_version, latest_version, migrate
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
from ._store import Store, StoreURIError
from ._writer import drop_stored, existing_trace_ids, write_batch

__all__ = [
    "MIGRATIONS",
    "SESSION_COLUMNS",
    "TABLES",
    "USER_TRACE_COLUMNS",
    "Migration",
    "RowBatch",
    "Store",
    "StoreURIError",
    "add_event_rows",
    "current_version",
    "drop_stored",
    "existing_trace_ids",
    "latest_version",
    "migrate",
    "session_row",
    "user_trace_row",
    "value_text",
    "write_batch",
]
