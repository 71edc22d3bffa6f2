"""The sink: Kafka envelopes in, ClickHouse rows out, offsets committed only after the rows are stored.

Steps, in the order one record meets them (arroyo style; each says what it must not do):

1. **poll** — ``getmany`` from every assigned partition that is not paused. Must not block longer
   than the next due batch or retry; must not process records of a partition whose start position
   is not yet pinned (see *seek*).
2. **seek** — the first time a partition shows up after an assignment, read its committed offset C
   and seek there, discarding whatever this poll returned for it. This pins the stream to C even if
   a poll straddled a rebalance. Must not let a record older than C, or a record fetched for a
   previous assignment, into a batch.
3. **ledger** — before the first record of a partition after an assignment, look up the ledger row
   that starts at that record. If there is one, the first batch is bounded: it must end exactly at
   the row's ``last_offset`` (same bounds → same token → ClickHouse drops what was already inserted).
   Must not flush a bounded batch before it reaches its bound, on any trigger (drain and revoke
   drop it uncommitted instead: the next owner rebuilds it).
4. **decode** — split the envelope, validate each line, append rows to the partition's batch;
   dead-letter bad lines (or the whole message when it is not NDJSON text). Must not raise for
   bad input, must not drop a line silently, must not touch ClickHouse.
5. **flush** — when a batch is full, old, or (on revoke / stop) final: write the ledger row, insert
   with the batch's token in a worker thread, await the dead letters of its offsets, then commit
   ``last + 1``. Must not commit before the insert succeeded. On failure it keeps the batch, pauses
   the partition and retries with backoff later — it must not sleep in the loop, lose the batch,
   or let later records of that partition overtake it.

   When a ``traces.v1`` or ``sessions.v1`` batch comes of age, every other batch of those topics is
   flushed with it, in one insert per table (one ledger insert, one first-write-wins lookup, one
   commit): a few hundred traces per partition every half second make small inserts, and ClickHouse
   pays per insert. A group that fails is retried as the same group with the same token. A batch
   written in a group and then replayed or flushed alone (crash, revoke) cannot match that token, so
   it inserts only what is not stored: trace rows go last (a stored trace row proves the rest of
   its write is stored), stored traces are dropped with their spans and tags, and the remaining
   span, tag, assessment and session rows are checked by key (``drop_stored``). ``user-rollups.v1``
   batches are never grouped: their facts are sums, exact only by token and marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import types
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from tracehouse.schemas import FORMAT_NDJSON, HEADER_FORMAT, UserTraceFact, split_envelope
from tracehouse.storage import Ledger, RowBatch, Store, drop_stored, existing_trace_ids, write_batch

from ._batch import BatchLimits, PartitionBatch, advance_mark
from ._config import SinkConfig
from ._dlq import WHOLE_MESSAGE, DeadLetter, DeadLetterProducer, DeadLetterWarnings
from ._validate import Rejection, validate_line

log = logging.getLogger("tracehouse.sink")

T = TypeVar("T")


class _Stopped(Exception):
    """A stop was requested while the sink waited on Kafka."""


_CLOSE_TIMEOUT_S = 15.0

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


@dataclass(slots=True, eq=False)
class _PartitionState:
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


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._sink._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        await self._sink._on_assigned(assigned)


def envelope_problem(value: bytes, headers: Any) -> str | None:
    """Why a message cannot be split into lines at all (then it is dead-lettered whole)."""
    for key, raw in headers or ():
        if key == HEADER_FORMAT and raw != FORMAT_NDJSON:
            return f"unsupported envelope format {raw!r} (expected {FORMAT_NDJSON!r})"
    if b"\x00" in value:
        return "binary message (contains NUL bytes), not an NDJSON envelope"
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"message is not UTF-8 text: {exc}"
    return None


class Sink:
    """Consume trace envelopes and write them to ClickHouse, exactly once in effect.

    ``store`` may be shared with other components of the process (e.g. an HTTP server); when it is
    ``None`` the sink opens ``config.store_uri`` on :meth:`run` and closes it when it stops.
    The store must already be migrated: the sink never runs DDL.
    """

    def __init__(self, config: SinkConfig, store: Store | None = None) -> None:
        self.config = config
        self._store = store
        self._owns_store = store is None
        self._limits = BatchLimits(
            max_rows=config.max_batch_rows,
            max_bytes=config.max_batch_bytes,
            max_age_s=config.max_batch_age_ms / 1000,
        )
        self._consumer: Any = None
        self._dlq: DeadLetterProducer | None = None
        self._ledger: Ledger | None = None
        self._parts: dict[Partition, _PartitionState] = {}
        self._lock = asyncio.Lock()
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._committed: dict[Partition, int] = {}
        self._commit_cond = asyncio.Condition()
        self._warnings = DeadLetterWarnings(config.dlq_log_interval_s)
        self._envelopes = 0
        self._lines = 0
        self._events_written = 0
        self._rows_written = 0
        self._rejected = 0
        self._duplicates = 0
        self._facts_skipped = 0
        self._batches = 0
        self._replayed = 0
        self._flush_failures = 0
        self._writes = 0

    @classmethod
    def from_uri(cls, config: SinkConfig, store_uri: str | None = None) -> Sink:
        """A sink that opens (and owns) the store at ``store_uri`` or ``config.store_uri``."""
        if store_uri is not None and store_uri != config.store_uri:
            config = replace(config, store_uri=store_uri)
        return cls(config)

    @property
    def store(self) -> Store | None:
        return self._store

    # ------------------------------------------------------------------ public API

    def stats(self) -> SinkStats:
        return SinkStats(
            envelopes=self._envelopes,
            lines=self._lines,
            events_written=self._events_written,
            rows_written=self._rows_written,
            events_rejected=self._rejected,
            duplicates_skipped=self._duplicates,
            replayed_facts_skipped=self._facts_skipped,
            batches=self._batches,
            replayed_batches=self._replayed,
            flush_failures=self._flush_failures,
            writes=self._writes,
            pending_events=sum(p.batch.events for p in self._parts.values() if p.batch is not None),
            committed=types.MappingProxyType(dict(self._committed)),
            assigned=frozenset((tp[0], tp[1]) for tp in self._parts),
        )

    def committed_offsets(self) -> dict[Partition, int]:
        """Next offset to read per partition: every record below it is in ClickHouse."""
        return dict(self._committed)

    def caught_up(self) -> bool:
        """True when every assigned partition has committed up to the high watermark its last fetch
        reported: everything the broker held then is in ClickHouse. (Fetch high watermarks, unlike
        Tansu's ListOffsets answers, are exact.)"""
        if self._consumer is None or not self._parts:
            return False
        for key, part in self._parts.items():
            highwater = self._consumer.highwater(part.tp)
            if highwater is None or self._committed.get(key, 0) < highwater:
                return False
        return True

    async def wait_committed(self, offsets: Mapping[Partition, int], timeout_s: float | None = None) -> bool:
        """Wait until the record at each ``(topic, partition) → offset`` is stored and committed by
        this sink (read-your-writes). Returns ``False`` on timeout."""

        def reached() -> bool:
            return all(self._committed.get((t, p), -1) > off for (t, p), off in offsets.items())

        async def wait() -> None:
            async with self._commit_cond:
                await self._commit_cond.wait_for(reached)

        try:
            await asyncio.wait_for(wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def request_stop(self) -> None:
        """Ask :meth:`run` to drain and return. Safe to call from a signal handler."""
        self._stop_requested.set()

    async def stop(self) -> None:
        """Request a stop and wait until pending batches are flushed, committed and clients closed."""
        self.request_stop()
        if self._running:
            await self._done.wait()

    async def run(self) -> None:
        """Consume until :meth:`stop` / :meth:`request_stop`, then drain. Returns after closing.

        A sink runs once: after a stop, make a new one. Kafka errors in the loop are logged and
        retried; an error while starting (e.g. no broker) is raised after closing what was opened.
        """
        if self._running:
            raise RuntimeError("this sink is already running")
        self._running = True
        self._done.clear()
        try:
            await self._start()
            backoff = self.config.retry_backoff_ms / 1000
            while not self._stop_requested.is_set():
                try:
                    await self._step()
                except KafkaError as exc:
                    log.warning("kafka error in the consumer loop, retrying in %.1fs: %r", backoff, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_requested.wait(), backoff)
        finally:
            try:
                await self._drain()
            finally:
                await self._close()
                self._running = False
                self._done.set()

    # ------------------------------------------------------------------ lifecycle

    async def _start(self) -> None:
        cfg = self.config
        if self._store is None:
            self._store = await asyncio.to_thread(Store, cfg.store_uri)
        self._ledger = Ledger(self._store, cfg.group_id)
        self._dlq = DeadLetterProducer(
            cfg.bootstrap,
            cfg.dead_letter_topic,
            acks=cfg.dlq_acks,
            client_id=f"{cfg.client_id}-dlq",
            max_request_size=cfg.dlq_max_request_size,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            group_id=cfg.group_id,
            client_id=cfg.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=cfg.max_poll_records,
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
        )
        try:
            await self._or_stop(self._dlq.start())
            await self._or_stop(self._consumer.start())
        except _Stopped:
            return
        self._consumer.subscribe(list(cfg.source_topics), listener=_Rebalance(self))
        log.info(
            "sink consuming %s as group %s into %s (dead letters to %s)",
            ", ".join(cfg.source_topics), cfg.group_id, self._store.uri, cfg.dead_letter_topic,
        )  # fmt: skip

    async def _drain(self) -> None:
        """Flush and commit every batch that may be flushed; bounded by ``drain_timeout_s``."""
        if self._consumer is None:
            return
        async with self._lock:
            deadline = time.monotonic() + self.config.drain_timeout_s
            for part in list(self._parts.values()):
                await self._flush_final(part, deadline, "stop")
        self._warnings.emit()

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        dlq, self._dlq = self._dlq, None
        for name, client in (("consumer", consumer), ("dead-letter producer", dlq)):
            if client is None:
                continue
            try:
                await asyncio.wait_for(client.stop(), _CLOSE_TIMEOUT_S)
            except Exception as exc:  # includes the timeout: closing must not hang the process
                log.warning("closing the %s failed: %r", name, exc)
        self._parts.clear()
        if self._owns_store and self._store is not None:
            store, self._store = self._store, None
            await asyncio.to_thread(store.close)
        log.info("sink stopped: %s", self.stats())

    # ------------------------------------------------------------------ rebalance

    async def _on_revoked(self, revoked: set[Any]) -> None:
        """Flush and commit the revoked partitions' batches before giving them up. A batch that
        cannot be flushed within ``revoke_timeout_s`` is dropped uncommitted (its next owner replays
        it); this must not block the rebalance for longer than that."""
        async with self._lock:
            deadline = time.monotonic() + self.config.revoke_timeout_s
            for tp in revoked:
                part = self._parts.pop((tp[0], tp[1]), None)
                if part is not None:
                    await self._flush_final(part, deadline, "revoke")
        if revoked:
            log.info("partitions revoked: %s", sorted(f"{t}[{p}]" for t, p in revoked))

    async def _on_assigned(self, assigned: set[Any]) -> None:
        """Start every assigned partition afresh: its position is pinned (and its ledger row looked
        up) by the loop, which must not trust records fetched before that."""
        async with self._lock:
            for tp in assigned:
                self._parts[(tp[0], tp[1])] = _PartitionState(tp)
        log.info("partitions assigned: %s", sorted(f"{t}[{p}]" for t, p in assigned))

    # ------------------------------------------------------------------ the loop

    async def _or_stop(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` unless a stop is requested first (then cancel it and raise ``_Stopped``).
        A poll must not keep a stop waiting: aiokafka waits without a timeout while a rebalance
        is in progress, and a broker that lost the group can keep it there indefinitely."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise _Stopped

    async def _step(self) -> None:
        try:
            fetched = await self._or_stop(
                self._consumer.getmany(timeout_ms=self._poll_timeout_ms(), max_records=self.config.max_poll_records)
            )
        except _Stopped:
            return
        async with self._lock:
            # Records fetched before a partition was pinned may predate the assignment: drop them,
            # the seek makes the consumer fetch them again from the committed offset.
            pinned_now: set[Partition] = set()
            for key, state in list(self._parts.items()):
                if not state.pinned and not state.lost and state.retry_at is None:
                    await self._pin(state)
                    pinned_now.add(key)
            for tp, records in fetched.items():
                key = (tp[0], tp[1])
                part = self._parts.get(key)
                if part is None or part.lost or not part.pinned or key in pinned_now:
                    continue
                await self._take(part, records)
            await self._flush_due()
        self._warnings.maybe_emit()

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        wait = self.config.poll_timeout_ms / 1000
        for part in self._parts.values():
            if part.retry_at is not None:
                wait = min(wait, part.retry_at - now)
            elif part.batch is not None and (due := part.batch.due_at(self._limits)) is not None:
                wait = min(wait, due - now)
        return max(0, int(wait * 1000))

    def _backoff(self, part: _PartitionState) -> float:
        cfg = self.config
        delay = cfg.retry_backoff_ms * (2 ** min(part.failures - 1, 20))
        return float(min(delay, cfg.retry_backoff_max_ms)) / 1000

    def _pause(self, part: _PartitionState, offset: int | None) -> None:
        """Stop fetching a partition until its retry is due; rewind it to ``offset`` (the first
        record not taken) so nothing is skipped when it resumes."""
        with contextlib.suppress(IllegalStateError):
            self._consumer.pause(part.tp)
            if offset is not None:
                self._consumer.seek(part.tp, offset)

    def _resume(self, part: _PartitionState) -> None:
        with contextlib.suppress(IllegalStateError):
            self._consumer.resume(part.tp)

    def _fail(self, part: _PartitionState, offset: int | None, what: str, exc: BaseException) -> None:
        part.failures += 1
        delay = self._backoff(part)
        part.retry_at = time.monotonic() + delay
        self._pause(part, offset)
        log.warning(
            "%s for %s[%d] failed (attempt %d), retrying in %.1fs without committing: %r",
            what, part.tp[0], part.tp[1], part.failures, delay, exc,
        )  # fmt: skip

    async def _pin(self, part: _PartitionState) -> None:
        """Step *seek*: read the committed offset and seek there. The caller discards the records
        this poll returned for the partition."""
        tp = part.tp
        try:
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
        except IllegalStateError:
            part.lost = True
            return
        except KafkaError as exc:
            self._fail(part, None, "reading the committed offset", exc)
            return
        part.start_offset = committed
        part.pinned = True
        part.failures = 0
        if committed is not None:
            self._set_committed(tp, committed)

    async def _take(self, part: _PartitionState, records: list[Any]) -> None:
        """Steps *ledger* and *decode* for consecutive records of one partition, flushing when a
        batch is full. On a failure the partition is rewound to the first record not taken."""
        for i, rec in enumerate(records):
            offset: int = rec.offset
            if part.next_offset is not None and offset < part.next_offset:
                continue  # already taken (re-delivered after a rewind)
            if part.retry_at is not None:
                self._pause(part, offset)
                return
            if not part.ledger_checked and not await self._check_ledger(part, offset):
                return
            if part.replay_end is not None and offset > part.replay_end:
                # The recorded batch ended in an offset gap: close it at its recorded bound.
                batch = part.batch
                part.replay_end = None
                if batch is not None:
                    if batch.bound is not None:
                        batch.last_offset = max(batch.last_offset, batch.bound)
                    if not await self._flush(part, offset):
                        return
            batch = part.batch
            if batch is None:
                batch = part.batch = PartitionBatch(
                    topic=part.tp[0],
                    partition=part.tp[1],
                    first_offset=offset,
                    created=time.monotonic(),
                    bound=part.replay_end,
                    ledgered=part.replay_end is not None,
                )
            await self._decode_into(batch, rec, part.marks)
            batch.note_record(offset, len(rec.value or b""))
            part.next_offset = offset + 1
            if batch.full(self._limits):
                nxt = records[i + 1].offset if i + 1 < len(records) else None
                if not await self._flush(part, nxt):
                    return

    async def _check_ledger(self, part: _PartitionState, offset: int) -> bool:
        assert self._ledger is not None
        ledger = self._ledger
        topic, partition = part.tp[0], part.tp[1]
        rollups = topic == self.config.rollups_topic

        def lookup() -> tuple[int | None, dict[int, tuple[int, int]] | None]:
            bound = ledger.replay_bound(topic, partition, offset)
            return bound, ledger.load_marks(topic, partition) if rollups else None

        try:
            bound, marks = await asyncio.to_thread(lookup)
        except Exception as exc:
            self._fail(part, offset, "the ledger lookup", exc)
            return False
        part.ledger_checked = True
        part.marks = marks
        part.failures = 0
        if bound is not None and bound >= offset:
            part.replay_end = bound
            log.info(
                "%s[%d]: replaying batch [%d, %d] from the ledger (same bounds, same dedup token)",
                part.tp[0], part.tp[1], offset, bound,
            )  # fmt: skip
        return True

    async def _decode_into(
        self, batch: PartitionBatch, rec: Any, marks: dict[int, tuple[int, int]] | None = None
    ) -> None:
        value: bytes | None = rec.value
        self._envelopes += 1
        if not value:
            return
        problem = envelope_problem(value, rec.headers)
        if problem is not None:
            await self._dead_letter(batch, rec, WHOLE_MESSAGE, value, problem)
            return
        for index, line in enumerate(split_envelope(value)):
            self._lines += 1
            try:
                result = validate_line(line)
                if isinstance(result, Rejection):
                    reason = result.reason
                elif isinstance(result, UserTraceFact) and marks is not None:
                    if not advance_mark(marks, result.src_partition, result.src_offset, result.src_line):
                        self._facts_skipped += 1  # re-emitted by a sessionizer replay: applied already
                        continue
                    batch.add_event(result)
                    batch.marks[result.src_partition] = marks[result.src_partition]
                    continue
                else:
                    batch.add_event(result)
                    continue
            except Exception as exc:  # a bug or an unforeseen value: one line, not the stream
                reason = f"rejected while building rows: {exc!r}"
            await self._dead_letter(batch, rec, index, line, reason)

    async def _dead_letter(self, batch: PartitionBatch, rec: Any, line: int, raw: bytes, reason: str) -> None:
        assert self._dlq is not None
        letter = DeadLetter(
            value=bytes(raw),
            reason=reason,
            origin_topic=rec.topic,
            origin_partition=rec.partition,
            origin_offset=rec.offset,
            origin_line=line,
            time_ms=int(time.time() * 1000),
            key=rec.key,
        )
        batch.dead_letters.append(await self._dlq.send(letter))
        self._rejected += 1
        self._warnings.note(letter)

    def _groupable(self, part: _PartitionState) -> bool:
        batch = part.batch
        return (batch is not None and not part.lost and part.retry_at is None and batch.bound is None
                and batch.group is None and part.tp[0] != self.config.rollups_topic)  # fmt: skip

    async def _flush_due(self) -> None:
        """Flush batches past their age and retry failed flushes whose backoff has elapsed. A due
        batch of a groupable topic takes every other groupable batch along (see *flush*)."""
        now = time.monotonic()
        group: list[_PartitionState] = []
        group_due = False
        retried: set[str] = set()
        for part in list(self._parts.values()):
            if part.lost:
                continue
            batch = part.batch
            if part.retry_at is not None:
                if now < part.retry_at:
                    continue
                if batch is None:  # a failed lookup: resume and look again
                    part.retry_at = None
                    self._resume(part)
                    continue
                if batch.group is not None:
                    if batch.group not in retried:  # the same group again, with the same token
                        retried.add(batch.group)
                        mates = [p for p in self._parts.values()
                                 if not p.lost and p.batch is not None and p.batch.group == batch.group]  # fmt: skip
                        await self._flush_group(mates, batch.group)
                    continue
                await self._flush(part, None)
                continue
            if self._groupable(part):
                group.append(part)
                assert batch is not None
                due = batch.due_at(self._limits)
                group_due = group_due or (due is not None and now >= due)
                continue
            if batch is not None and (due := batch.due_at(self._limits)) is not None and now >= due:
                await self._flush(part, None)
        if group_due:
            if len(group) == 1:
                await self._flush(group[0], None)
            else:
                await self._flush_group(group, None)

    # ------------------------------------------------------------------ flush

    def _check(self, batches: list[PartitionBatch], *, grouped: bool) -> None:
        """Worker thread: first write wins, with one lookup for all ``batches``.

        A trace id stored by an earlier batch is a duplicate event (a retry, or an attempt to change
        immutable metadata), and so is one that an earlier batch of the same group carries. An
        ordinary batch is checked once, before its first attempt, so a retry (same token) does not
        mistake its own rows for older ones. A batch that may have been stored in part under another
        token (replayed from the ledger, or first written in a group) is checked before every
        attempt, and its other rows are checked by key: it inserts only what is not stored."""
        assert self._store is not None

        def partial(b: PartitionBatch) -> bool:  # may be stored in part under another token
            return b.replaying or (b.group is not None and not grouped)

        todo = [b for b in batches if not b.checked or partial(b)]
        ids: set[str] = set()
        for b in todo:
            ids |= b.rows.trace_ids
        stored = existing_trace_ids(self._store, ids) if ids else set()
        seen: set[str] = set()
        for b in todo:
            duplicates = b.rows.trace_ids & (stored | seen)
            if duplicates:
                self._duplicates += b.rows.drop_traces(duplicates)
                log.info("%s[%d]: skipped %d trace events already logged", b.topic, b.partition, len(duplicates))
            if partial(b):
                drop_stored(self._store, b.rows)
            seen |= b.rows.trace_ids
            b.checked = True

    def _write(self, batch: PartitionBatch) -> None:
        """Worker thread: ledger row, then the rows with the batch's token. Must not commit."""
        assert self._ledger is not None
        assert self._store is not None
        if not batch.written:
            self._check([batch], grouped=False)
        if not batch.ledgered:
            self._ledger.record(batch.topic, batch.partition, batch.first_offset, batch.last_offset)
            batch.ledgered = True
        if not batch.written:
            # A replay, or a batch first written in a group, was checked against what is stored just
            # above: its token adds nothing, and may be one ClickHouse logged for a part it never
            # committed (a crash in between), which would drop the replay. Rollup facts have no
            # stored rows to check against: they keep their token (see docs/architecture.md).
            exact = (batch.replaying or batch.group is not None) and batch.topic != self.config.rollups_topic
            batch.rows_written = write_batch(self._store, batch.rows, batch.token(self.config.group_id),
                                             deduplicate=not exact)  # fmt: skip
            batch.written = True
            self._writes += 1
        if batch.marks and not batch.marked:
            self._ledger.record_marks(batch.topic, batch.partition, batch.marks)
            batch.marked = True

    def _write_group(self, batches: list[PartitionBatch], token: str) -> None:
        """Worker thread: the batches' ledger rows in one insert, then their rows merged into one
        insert per table with the group's token. Must not commit."""
        assert self._ledger is not None
        assert self._store is not None
        pending = [b for b in batches if not b.written]
        if not pending:
            return
        if any(not b.checked for b in pending):
            self._check(pending, grouped=True)
        unledgered = [(b.topic, b.partition, b.first_offset, b.last_offset) for b in pending if not b.ledgered]
        if unledgered:
            self._ledger.record_many(unledgered)
            for b in pending:
                b.ledgered = True
        merged = RowBatch()
        for b in pending:
            for table, rows in b.rows.rows.items():
                merged.rows[table].extend(rows)
        write_batch(self._store, merged, token)
        self._writes += 1
        for b in pending:
            b.rows_written = b.row_count()
            b.written = True

    async def _flush_group(self, parts: list[_PartitionState], token: str | None) -> bool:
        """Step *flush* for several partitions' batches at once (see the module docstring)."""
        assert self._dlq is not None
        batches = [p.batch for p in parts if p.batch is not None]
        if token is None:
            tokens = ";".join(b.token(self.config.group_id) for b in batches)
            token = "group:" + hashlib.sha1(tokens.encode(), usedforsecurity=False).hexdigest()
            for b in batches:
                b.group = token
        try:
            if any(b.row_count() and not b.written for b in batches):
                await asyncio.to_thread(self._write_group, batches, token)
            for b in batches:
                await self._dlq.confirm(b.dead_letters)
            await self._consumer.commit({p.tp: p.batch.last_offset + 1 for p in parts if p.batch is not None})
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit of a group of %d batches refused (%r); their new owners replay them", len(parts), exc)
            for p in parts:
                p.batch = None
                p.lost = True
                self._pause(p, None)
            return False
        except Exception as exc:
            self._flush_failures += 1
            for p in parts:
                self._fail(p, None, f"grouped flush ({len(parts)} batches)", exc)
            return False
        for p in parts:
            if p.batch is not None:
                await self._flushed(p, p.batch)
        return True

    async def _flush(self, part: _PartitionState, next_offset: int | None) -> bool:
        """Step *flush* for the partition's batch. ``next_offset`` is the first record after the
        batch that was already fetched (the partition is rewound there if the flush fails)."""
        batch = part.batch
        assert batch is not None
        assert self._dlq is not None
        tp = part.tp
        try:
            if (batch.row_count() and not batch.written) or (batch.marks and not batch.marked):
                await asyncio.to_thread(self._write, batch)
            await self._dlq.confirm(batch.dead_letters)
            await self._consumer.commit({tp: batch.last_offset + 1})
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on: whoever owns the partition now replays the batch from the ledger.
            log.warning(
                "%s[%d]: commit of [%d, %d] refused (%r); the new owner replays it",
                tp[0], tp[1], batch.first_offset, batch.last_offset, exc,
            )  # fmt: skip
            part.batch = None
            part.lost = True
            self._pause(part, None)
            return False
        except Exception as exc:
            self._flush_failures += 1
            self._fail(part, next_offset, f"flush of [{batch.first_offset}, {batch.last_offset}]", exc)
            return False
        await self._flushed(part, batch)
        return True

    async def _flushed(self, part: _PartitionState, batch: PartitionBatch) -> None:
        """Bookkeeping after a batch was written and committed."""
        tp = part.tp
        part.batch = None
        if batch.bound is not None:
            part.replay_end = None
            self._replayed += 1
        if part.retry_at is not None:
            part.retry_at = None
            self._resume(part)
        part.failures = 0
        self._batches += 1
        self._events_written += batch.events
        self._rows_written += batch.rows_written
        self._set_committed(tp, batch.last_offset + 1)
        async with self._commit_cond:
            self._commit_cond.notify_all()

    async def _flush_final(self, part: _PartitionState, deadline: float, why: str) -> None:
        """Flush a partition's batch before giving the partition up (revoke or stop), retrying
        until ``deadline``. An incomplete replayed batch, or one that still fails, is dropped
        uncommitted: the next consumer rebuilds it from the same offsets."""
        tp = part.tp
        while part.batch is not None and not part.lost:
            batch = part.batch
            if not batch.complete:
                log.info(
                    "%s[%d]: %s before the replayed batch [%d, %d] was complete; it is replayed later",
                    tp[0], tp[1], why, batch.first_offset, batch.bound,
                )  # fmt: skip
                part.batch = None
                return
            remaining = deadline - time.monotonic()
            if remaining > 0:
                try:
                    if await asyncio.wait_for(self._flush(part, None), remaining):
                        return
                except TimeoutError:
                    pass
            retry_at = part.retry_at if part.retry_at is not None else time.monotonic()
            if part.lost or retry_at >= deadline or remaining <= 0:
                if part.batch is not None:
                    log.error(
                        "%s[%d]: giving up on batch [%d, %d] at %s; not committed, it will be replayed",
                        tp[0], tp[1], batch.first_offset, batch.last_offset, why,
                    )  # fmt: skip
                part.batch = None
                return
            await asyncio.sleep(max(0.0, retry_at - time.monotonic()))

    def _set_committed(self, tp: Any, offset: int) -> None:
        key = (tp[0], tp[1])
        if offset > self._committed.get(key, -1):
            self._committed[key] = offset
