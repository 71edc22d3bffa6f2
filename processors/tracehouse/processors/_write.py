"""Step *write*: a batch's rows into ClickHouse, exactly once in effect. Runs in a worker thread.

Must not commit offsets, must not talk to Kafka. Order within one write: first write wins (trace ids
already stored are dropped), the ledger row(s), then the rows with the batch's deduplication token.

A batch that may have been stored in part under another token (replayed from the ledger after a
crash, or first written in a group and then written alone) is checked against what is stored before
every attempt (``drop_stored``: trace rows go last in every write, so a stored trace row proves the
rest of its write is stored) and inserted with ClickHouse's deduplication off: a non-replicated
MergeTree logs a block's token before it commits the part, so a replay under an old token could be
dropped and lost. ``user-rollups.v1`` facts have nothing stored to check against: they keep their
token (see docs/architecture.md).
"""

from __future__ import annotations

import logging

from tracehouse.storage import RowBatch, drop_stored, existing_trace_ids, write_batch

from ._batch import PartitionBatch
from ._state import SinkState

log = logging.getLogger("tracehouse.sink")


def check(state: SinkState, batches: list[PartitionBatch], *, grouped: bool) -> None:
    """First write wins, with one lookup for all ``batches``.

    A trace id stored by an earlier batch is a duplicate event (a retry, or an attempt to change
    immutable metadata), and so is one that an earlier batch of the same group carries. An ordinary
    batch is checked once, before its first attempt, so a retry (same token) does not mistake its own
    rows for older ones. A batch that may have been stored in part under another token is checked
    before every attempt, and its other rows are checked by key: it inserts only what is not stored."""
    assert state.store is not None

    def partial(b: PartitionBatch) -> bool:  # may be stored in part under another token
        return b.replaying or (b.group is not None and not grouped)

    todo = [b for b in batches if not b.checked or partial(b)]
    ids: set[str] = set()
    for b in todo:
        ids |= b.rows.trace_ids
    stored = existing_trace_ids(state.store, ids) if ids else set()
    seen: set[str] = set()
    for b in todo:
        duplicates = b.rows.trace_ids & (stored | seen)
        if duplicates:
            state.counts["duplicates_skipped"] += b.rows.drop_traces(duplicates)
            log.info("%s[%d]: skipped %d trace events already logged", b.topic, b.partition, len(duplicates))
        if partial(b):
            drop_stored(state.store, b.rows)
        seen |= b.rows.trace_ids
        b.checked = True


def write(state: SinkState, batch: PartitionBatch) -> None:
    """One partition's batch: its ledger row, then its rows with the batch's token."""
    assert state.ledger is not None
    assert state.store is not None
    if not batch.written:
        check(state, [batch], grouped=False)
    if not batch.ledgered:
        state.ledger.record(batch.topic, batch.partition, batch.first_offset, batch.last_offset)
        batch.ledgered = True
    if not batch.written:
        exact = (batch.replaying or batch.group is not None) and batch.topic != state.config.rollups_topic
        batch.rows_written = write_batch(state.store, batch.rows, batch.token(state.scope),
                                         deduplicate=not exact)  # fmt: skip
        batch.written = True
        state.counts["writes"] += 1
    if batch.marks and not batch.marked:
        state.ledger.record_marks(batch.topic, batch.partition, batch.marks)
        batch.marked = True


def write_group(state: SinkState, batches: list[PartitionBatch], token: str) -> None:
    """Several partitions' batches: their ledger rows in one insert, then their rows merged into one
    insert per table with the group's token."""
    assert state.ledger is not None
    assert state.store is not None
    pending = [b for b in batches if not b.written]
    if not pending:
        return
    if any(not b.checked for b in pending):
        check(state, pending, grouped=True)
    unledgered = [(b.topic, b.partition, b.first_offset, b.last_offset) for b in pending if not b.ledgered]
    if unledgered:
        state.ledger.record_many(unledgered)
        for b in pending:
            b.ledgered = True
    merged = RowBatch()
    for b in pending:
        for table, rows in b.rows.rows.items():
            merged.rows[table].extend(rows)
    write_batch(state.store, merged, token)
    state.counts["writes"] += 1
    for b in pending:
        b.rows_written = b.row_count()
        b.written = True
