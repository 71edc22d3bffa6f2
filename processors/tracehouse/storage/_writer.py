"""Write a :class:`RowBatch` so that writing it twice has the effect of writing it once.

Each table's block carries ``insert_deduplication_token = <token>``; ClickHouse drops a block whose
token it has already seen (``non_replicated_deduplication_window`` on every table). The sink derives
the token from the exact Kafka offsets a batch covers, so a replay after a crash is a no-op.
"""

from __future__ import annotations

from ._rows import TABLES, RowBatch
from ._store import Store

#: A backfill may span many months (one ClickHouse partition each); the default of 100 per insert
#: would make such a batch fail on every retry.
#: A block dropped as a duplicate must also be dropped by the views it feeds (user rollups).
_INSERT_SETTINGS = {"max_partitions_per_insert_block": 1000, "deduplicate_blocks_in_dependent_materialized_views": 1}


def write_batch(store: Store, batch: RowBatch, token: str | None = None) -> int:
    """Insert every non-empty table of ``batch``. Returns the number of rows written."""
    written = 0
    for table, rows in batch.rows.items():
        if not rows:
            continue
        settings: dict[str, object] = dict(_INSERT_SETTINGS)
        if token:
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
