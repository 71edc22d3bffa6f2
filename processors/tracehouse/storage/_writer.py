"""Write a :class:`RowBatch` so that writing it twice has the effect of writing it once.

Each table's block carries ``insert_deduplication_token = <token>``; ClickHouse drops a block whose
token it has already seen (``non_replicated_deduplication_window`` on every table). The sink derives
the token from the exact Kafka offsets a batch covers, so a replay after a crash is a no-op.
"""

from __future__ import annotations

from ._rows import TABLES, RowBatch
from ._store import Store


def write_batch(store: Store, batch: RowBatch, token: str | None = None) -> int:
    """Insert every non-empty table of ``batch``. Returns the number of rows written."""
    written = 0
    for table, rows in batch.rows.items():
        if not rows:
            continue
        settings = {"insert_deduplication_token": f"{token}:{table}"} if token else {}
        store.insert(table, rows, TABLES[table], settings=settings)
        written += len(rows)
    return written
