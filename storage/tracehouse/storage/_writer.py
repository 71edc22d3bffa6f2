"""Write a :class:`RowBatch` so that writing it twice has the effect of writing it once.

Each table's block carries ``insert_deduplication_token = <token>``; ClickHouse drops a block whose
token it has already seen (``non_replicated_deduplication_window`` on every table). The sink derives
the token from the exact Kafka offsets a batch covers, so a replay after a crash is a no-op.

Rows that may have been stored under another token (the sink writes the batches of several
partitions in one insert, and replays them one partition at a time) are made exact differently:
``traces`` is inserted last, so a stored trace row means the rest of its write is stored too, and
:func:`drop_stored` removes the rows of the other tables whose keys are already there.
"""

from __future__ import annotations

from typing import Any

from ._rows import TABLES, RowBatch
from ._store import Store

#: ``traces`` last: a trace row is the proof that everything written with it is stored.
_WRITE_ORDER = (*(t for t in TABLES if t != "traces"), "traces")

#: A backfill may span many months (one ClickHouse partition each); the default of 100 per insert
#: would make such a batch fail on every retry.
#: A block dropped as a duplicate must also be dropped by the views it feeds (user rollups).
_INSERT_SETTINGS = {"max_partitions_per_insert_block": 1000, "deduplicate_blocks_in_dependent_materialized_views": 1}


def write_batch(store: Store, batch: RowBatch, token: str | None = None, *, deduplicate: bool = True) -> int:
    """Insert every non-empty table of ``batch``. Returns the number of rows written.

    ``deduplicate=False`` turns ClickHouse's block deduplication off, for a batch made exact by
    checking what is stored (:func:`drop_stored`, first write wins). A non-replicated MergeTree
    records a block's token in its deduplication log *before* it commits the part, so a process
    killed in between leaves a token whose rows were never stored: a replay under that token (or of
    identical rows, hashed) would be dropped as a duplicate and lost."""
    written = 0
    for table in _WRITE_ORDER:
        rows = batch.rows[table]
        if not rows:
            continue
        settings: dict[str, object] = dict(_INSERT_SETTINGS)
        if not deduplicate:
            settings["insert_deduplicate"] = 0
        elif token:
            settings["insert_deduplication_token"] = f"{token}:{table}"
        store.insert(table, rows, TABLES[table], settings=settings)
        written += len(rows)
    return written


def existing_trace_ids(store: Store, trace_ids: set[str]) -> set[str]:
    """Which of ``trace_ids`` are already stored (the ``trace_id`` bloom filter keeps this cheap)."""
    if not trace_ids:
        return set()
    rows = store.query(
        "SELECT DISTINCT trace_id FROM traces WHERE trace_id IN {ids:Array(String)}", {"ids": sorted(trace_ids)}
    )
    return {str(r[0]) for r in rows}


#: Per table: the key columns that identify a stored row (positions in :data:`TABLES` order) and the
#: column to look it up by. ``user_trace_facts`` is not here: facts are exact by token and marks.
_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "spans": (("trace_id", "span_id"), "trace_id"),
    "trace_tags": (("trace_id", "key", "version"), "trace_id"),
    "assessments": (("trace_id", "assessment_id", "version"), "trace_id"),
    "sessions": (("session_id", "experiment_id", "version"), "session_id"),
}


def drop_stored(store: Store, batch: RowBatch) -> int:
    """Remove from ``batch`` the span, tag, assessment and session rows already stored (same key and
    version), for a batch replayed after a crash that may have stored part of it under another
    token. Trace rows are left to the first-write-wins check. Returns the rows removed."""
    removed = 0
    for table, (key_columns, lookup) in _KEYS.items():
        rows = batch.rows[table]
        if not rows:
            continue
        columns = TABLES[table]
        positions = [columns.index(c) for c in key_columns]
        at = columns.index(lookup)
        values = sorted({str(r[at]) for r in rows})
        found = store.query(
            f"SELECT DISTINCT {', '.join(key_columns)} FROM {table} WHERE {lookup} IN {{v:Array(String)}}",
            {"v": values},
        )
        stored: set[tuple[Any, ...]] = {tuple(f) for f in found}
        if not stored:
            continue
        kept = [r for r in rows if tuple(r[i] for i in positions) not in stored]
        removed += len(rows) - len(kept)
        batch.rows[table] = kept
    return removed
