"""One partition's batch: the rows built from a contiguous run of offsets, and its flush triggers.

A batch covers the offsets ``[first_offset, last_offset]`` of one partition. Its deduplication token
is a pure function of (group, topic, partition, first, last), so a batch rebuilt after a crash with
the same bounds writes with the same token and ClickHouse drops it as a duplicate.

Pure bookkeeping: nothing here may do I/O, talk to Kafka, or look at the clock except through the
``now`` the caller passes in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from tracehouse.schemas import Event
from tracehouse.storage import RowBatch

from ._dlq import PendingLetter


def advance_mark(marks: dict[int, tuple[int, int]], src_partition: int, src_offset: int, src_line: int) -> bool:
    """Whether a ``user_trace`` fact from ``traces.v1`` position ``(src_partition, src_offset,
    src_line)`` is new; if so, ``marks`` advances to it. The sessionizer emits a source partition's
    facts in position order and re-emits identical ones when it replays, so a position at or below the
    mark has been applied already."""
    pos = (src_offset, src_line)
    seen = marks.get(src_partition)
    if seen is not None and pos <= seen:
        return False
    marks[src_partition] = pos
    return True


def batch_token(group: str, topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    """The ``insert_deduplication_token`` prefix of a batch (``write_batch`` appends ``:<table>``)."""
    return f"{group}:{topic}:{partition}:{first_offset}:{last_offset}"


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_rows: int
    max_bytes: int
    max_age_s: float


@dataclass(slots=True, eq=False)
class PartitionBatch:
    """Rows and dead letters of consecutive records of one partition, not yet committed.

    ``bound`` is set when the batch replays a ledger row: it must end exactly at that offset, so it
    ignores the size and age triggers and cannot be flushed before it gets there.
    """

    topic: str
    partition: int
    first_offset: int
    created: float
    bound: int | None = None
    last_offset: int = -1
    rows: RowBatch = field(default_factory=RowBatch)
    events: int = 0
    nbytes: int = 0
    records: int = 0
    dead_letters: list[PendingLetter] = field(default_factory=list)
    #: ``user_trace`` facts only: the highest source position per ``traces.v1`` partition applied here.
    marks: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Set when the batch was first written together with other partitions' batches: the token of
    #: that write, so a retry writes the same group again with the same token.
    group: str | None = None
    #: Progress of the flush, so a retry resumes where the last attempt failed.
    checked: bool = False
    ledgered: bool = False
    written: bool = False
    marked: bool = False
    rows_written: int = 0

    def token(self, group: str) -> str:
        return batch_token(group, self.topic, self.partition, self.first_offset, self.last_offset)

    def add_event(self, event: Event) -> None:
        """Append the rows of one validated event. On error the batch is left as it was."""
        tables = self.rows.rows
        before = [(rows, len(rows)) for rows in tables.values()]
        try:
            self.rows.add(event)
        except BaseException:
            for rows, n in before:
                del rows[n:]
            raise
        self.events += 1

    def note_record(self, offset: int, nbytes: int) -> None:
        self.last_offset = offset
        self.nbytes += nbytes
        self.records += 1

    @property
    def replaying(self) -> bool:
        return self.bound is not None

    @property
    def complete(self) -> bool:
        """A replayed batch may be flushed only once it reached its bound; any other batch always."""
        return self.bound is None or self.last_offset >= self.bound

    def full(self, limits: BatchLimits) -> bool:
        """Reached a size trigger (or, when replaying, its bound)."""
        if self.bound is not None:
            return self.last_offset >= self.bound
        return len(self.rows) >= limits.max_rows or self.nbytes >= limits.max_bytes

    def due_at(self, limits: BatchLimits) -> float | None:
        """When the age trigger fires (``None`` for a replayed batch, which waits for its bound)."""
        if self.bound is not None:
            return None
        return self.created + limits.max_age_s

    def row_count(self) -> int:
        return len(self.rows)

    def tables(self) -> Iterator[tuple[str, int]]:
        for table, rows in self.rows.rows.items():
            if rows:
                yield table, len(rows)
