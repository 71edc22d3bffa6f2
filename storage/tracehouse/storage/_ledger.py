"""The sink's batch ledger (table ``_sink_batches``): which offsets each batch covered.

A row ``(group, topic, partition, first, last)`` is written *before* the batch's inserts. After a
crash the consumer restarts at the committed offset; if the ledger holds a row starting there, the
first batch is rebuilt to end exactly at ``last``, so it carries the same deduplication token and
ClickHouse drops whatever part of it was already inserted.

For ``user-rollups.v1`` the ledger also keeps *marks* (table ``_rollup_marks``): per batch, the highest
``traces.v1`` position whose facts it applied. The sessionizer re-emits identical facts in the same
order after a crash, so a fact at or below the mark of its source partition is a replay and is skipped.

Blocking calls on a :class:`~tracehouse.storage.Store`: run them in a worker thread. They must not
run DDL (``tracehouse migrate`` creates the table) and must not decide anything about offsets.
"""

from __future__ import annotations

from ._store import Store

LEDGER_TABLE = "_sink_batches"
MARKS_TABLE = "_rollup_marks"
_COLUMNS = ("consumer_group", "topic", "partition", "first_offset", "last_offset")
_MARK_COLUMNS = ("consumer_group", "topic", "partition", "src_partition", "src_offset", "src_line")


class Ledger:
    """The ledger rows of one consumer group."""

    def __init__(self, store: Store, group: str) -> None:
        self.store = store
        self.group = group

    def record(self, topic: str, partition: int, first_offset: int, last_offset: int) -> None:
        """Write the bounds of a batch about to be inserted. Writing the same row twice is harmless
        (the table is a ReplacingMergeTree keyed by the first offset)."""
        self.record_many([(topic, partition, first_offset, last_offset)])

    def record_many(self, batches: list[tuple[str, int, int, int]]) -> None:
        """:meth:`record` for several batches ``(topic, partition, first, last)`` in one insert."""
        self.store.insert(LEDGER_TABLE, [(self.group, *b) for b in batches], _COLUMNS)

    def replay_bound(self, topic: str, partition: int, first_offset: int) -> int | None:
        """``last_offset`` of the newest batch of this group that started at ``first_offset``."""
        rows = self.store.query(
            f"SELECT last_offset FROM {LEDGER_TABLE} "
            "WHERE consumer_group = {g:String} AND topic = {t:String} AND partition = {p:UInt32} "
            "AND first_offset = {f:Int64} ORDER BY created_at DESC, last_offset DESC LIMIT 1",
            {"g": self.group, "t": topic, "p": partition, "f": first_offset},
        )
        return int(rows[0][0]) if rows else None

    def rows(self, topic: str, partition: int) -> list[tuple[int, int]]:
        """All ``(first, last)`` rows of a partition, oldest first (for inspection and tests)."""
        out = self.store.query(
            f"SELECT first_offset, last_offset FROM {LEDGER_TABLE} FINAL "
            "WHERE consumer_group = {g:String} AND topic = {t:String} AND partition = {p:UInt32} "
            "ORDER BY first_offset",
            {"g": self.group, "t": topic, "p": partition},
        )
        return [(int(a), int(b)) for a, b in out]

    def record_marks(self, topic: str, partition: int, marks: dict[int, tuple[int, int]]) -> None:
        """Write the highest source position (``traces.v1`` partition -> (offset, line)) whose
        ``user_trace`` facts are now stored for this partition. Call it after the batch's rows are
        inserted: a mark must never pass rows that are not stored. Idempotent."""
        rows = [(self.group, topic, partition, p, o, i) for p, (o, i) in sorted(marks.items())]
        self.store.insert(MARKS_TABLE, rows, _MARK_COLUMNS)

    def load_marks(self, topic: str, partition: int) -> dict[int, tuple[int, int]]:
        """The highest source positions applied to this partition, per source partition. A batch
        replayed after a crash between its insert and its commit finds its own marks when they were
        written (its facts are then skipped: their rows are stored) or not (it is rebuilt with the
        same token, and ClickHouse drops what was stored)."""
        rows = self.store.query(
            f"SELECT src_partition, max((src_offset, src_line)) FROM {MARKS_TABLE} "
            "WHERE consumer_group = {g:String} AND topic = {t:String} AND partition = {p:UInt32} "
            "GROUP BY src_partition",
            {"g": self.group, "t": topic, "p": partition},
        )
        return {int(p): (int(pos[0]), int(pos[1])) for p, pos in rows}
