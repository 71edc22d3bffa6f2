"""What the sink's steps share: its clients, the state of each assigned partition, and its counters.

The steps (``_assign``, ``_decode``, ``_write``, ``_commit``) each take this state and change only the
parts their docstring names; the consumer loop (``_sink``) owns it. Nothing here does I/O but the
non-blocking pause/seek/resume calls on the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from aiokafka.errors import IllegalStateError

from tracehouse.schemas.errors import WriteStuck
from tracehouse.storage import Ledger, Store

from ._batch import BatchLimits, PartitionBatch
from ._config import SinkConfig
from ._dlq import DeadLetterProducer, DeadLetterWarnings, RefusalLimit
from ._epoch import epoch_scope

log = logging.getLogger("tracehouse.sink")
T = TypeVar("T")

#: ``(topic, partition)``. aiokafka's ``TopicPartition`` is a NamedTuple of the same shape.
Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of one :class:`Sink` since it was created."""

    #: Kafka messages taken from the source topics.
    envelopes: int
    #: Event lines seen inside them.
    lines: int
    #: Events whose rows were inserted and whose offsets were committed.
    events_written: int
    #: Rows inserted (all tables; a trace with 3 spans and 2 tags is 6 rows).
    rows_written: int
    #: Lines and whole messages dead-lettered.
    events_rejected: int
    #: Trace events skipped because their trace id was already stored (first write wins).
    duplicates_skipped: int
    #: ``user_trace`` facts skipped because their source position was already applied (replays).
    replayed_facts_skipped: int
    #: Batches flushed and committed.
    batches: int
    #: Of those, batches rebuilt to a ledger row's bounds after a crash or a rebalance.
    replayed_batches: int
    #: Failed flush attempts (each retried later).
    flush_failures: int
    #: Inserts rounds (one per table) made: a group of batches written together counts once.
    writes: int
    #: Events in batches not committed yet.
    pending_events: int
    #: Next offset to read, per partition, as last committed (or found committed at assignment).
    committed: Mapping[Partition, int]
    #: Partitions currently assigned to this sink.
    assigned: frozenset[Partition]


#: The :class:`SinkStats` fields the steps count (``SinkState.counts[name] += n``).
COUNTED: Final = (
    "envelopes", "lines", "events_written", "rows_written", "events_rejected", "duplicates_skipped",
    "replayed_facts_skipped", "batches", "replayed_batches", "flush_failures", "writes",
)  # fmt: skip


@dataclass(slots=True, eq=False)
class PartitionState:
    """What the sink knows about one assigned partition. Recreated on every assignment."""

    tp: Any
    #: The committed offset read after assignment (``None``: nothing committed yet).
    start_offset: int | None = None
    #: False until the position was pinned to ``start_offset`` (step *seek*).
    pinned: bool = False
    #: Offset after the last record taken into a batch.
    next_offset: int | None = None
    ledger_checked: bool = False
    replay_end: int | None = None
    batch: PartitionBatch | None = None
    failures: int = 0
    #: Set while a flush or a lookup is failing: the partition is paused until then.
    retry_at: float | None = None
    #: The group took the partition away while we flushed; ignore it until the new assignment.
    lost: bool = False
    #: ``user-rollups.v1`` only: highest applied source position per ``traces.v1`` partition
    #: (loaded with the ledger lookup, advanced as facts are taken).
    marks: dict[int, tuple[int, int]] | None = None


@dataclass(eq=False)
class SinkState:
    """The sink's clients, partitions and counters, shared by its steps."""

    config: SinkConfig
    store: Store | None
    limits: BatchLimits
    consumer: Any = None
    dlq: DeadLetterProducer | None = None
    ledger: Ledger | None = None
    parts: dict[Partition, PartitionState] = field(default_factory=dict)
    committed: dict[Partition, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    commit_cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    warnings: DeadLetterWarnings = field(default_factory=lambda: DeadLetterWarnings(10.0))
    #: The broker epoch being consumed (see ``_epoch``); ``""`` before the sink started.
    epoch: str = ""
    #: A write passed its deadline (``_commit.within_deadline``): the store may be held by its thread.
    stuck: bool = False
    #: The epoch of the current assignment is registered (``_assign.try_enter_epoch``); retries if not.
    epoch_ok: bool = False
    epoch_failures: int = 0
    epoch_retry_at: float | None = None
    #: Partitions the sink takes records of only below an offset (``Sink.hold``): a cut both
    #: processors of ``tracehouse up`` stop at before a broker generation ends.
    holds: dict[Partition, int] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        """What the ledger, the deduplication tokens and the rollup marks are keyed by: the consumer
        group in this broker epoch (offsets of another epoch name other records)."""
        return epoch_scope(self.config.group_id, self.epoch)
    #: Refused lines, against the limits of ``config`` (built from it).
    refusals: RefusalLimit = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.refusals = RefusalLimit(cfg.max_consecutive_refused, cfg.max_refused_ratio, cfg.refused_window)

    def set_committed(self, tp: Any, offset: int) -> None:
        key = (tp[0], tp[1])
        if offset > self.committed.get(key, -1):
            self.committed[key] = offset

    def backoff(self, part: PartitionState) -> float:
        cfg = self.config
        delay = cfg.retry_backoff_ms * (2 ** min(part.failures - 1, 20))
        return float(min(delay, cfg.retry_backoff_max_ms)) / 1000

    def pause(self, part: PartitionState, offset: int | None) -> None:
        """Stop fetching a partition until its retry is due; rewind it to ``offset`` (the first
        record not taken) so nothing is skipped when it resumes."""
        with contextlib.suppress(IllegalStateError):
            self.consumer.pause(part.tp)
            if offset is not None:
                self.consumer.seek(part.tp, offset)

    def resume(self, part: PartitionState) -> None:
        with contextlib.suppress(IllegalStateError):
            self.consumer.resume(part.tp)

    def fail(self, part: PartitionState, offset: int | None, what: str, exc: BaseException) -> None:
        """Count a failure of ``what`` for ``part`` and retry it after a backoff, paused meanwhile."""
        part.failures += 1
        delay = self.backoff(part)
        part.retry_at = time.monotonic() + delay
        self.pause(part, offset)
        log.warning(
            "%s for %s[%d] failed (attempt %d), retrying in %.1fs without committing: %r",
            what, part.tp[0], part.tp[1], part.failures, delay, exc,
        )  # fmt: skip

    def stats(self) -> SinkStats:
        return SinkStats(
            **{name: self.counts[name] for name in COUNTED},
            pending_events=sum(p.batch.events for p in self.parts.values() if p.batch is not None),
            committed=types.MappingProxyType(dict(self.committed)),
            assigned=frozenset((tp[0], tp[1]) for tp in self.parts),
        )  # fmt: skip


async def within_deadline(state: SinkState, fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking store call in a worker thread; past ``write_timeout_s`` the sink stops
    (``WriteStuck``): its batches are dropped uncommitted, to be replayed from the committed offsets by
    the next sink (a thread stuck in a call cannot be cancelled)."""
    timeout = state.config.write_timeout_s
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
    except TimeoutError:
        state.stuck = True
        for part in state.parts.values():
            part.batch = None
            part.lost = True  # neither the drain nor a revoke flushes or commits it now
        raise WriteStuck(
            f"a ClickHouse call did not return within {timeout:.0f}s; stopping without committing. "
            "Restarted, the sink replays its batches from the committed offsets (exactly)."
        ) from None
