"""The sessionizer: a faust worker folding ``traces.v1`` into session records on ``sessions.v1``.

Design (measured in ``docs/design/faust-spike``): one agent reads envelopes with
``stream.noack().events()`` and folds their ``trace`` lines into a plain dict of
:class:`SessionState` per source partition with the pure :func:`apply` (idempotent, so replays are
harmless). The agent body never awaits, so a flush never sees half an envelope. Every
``flush_interval_ms`` a timer

1. closes the sessions due at the partition's event-time watermark (max trace time seen there),
   and forgets closed sessions older than ``state_retention_ms`` (if set),
2. sends the ``user_trace`` facts of the traces folded for the first time to ``user-rollups.v1``
   (partitioned by user id) and waits until the broker has them all: a fact must be durable before
   the state that counts its trace, or a crash in between would lose it for good,
3. writes the dirty states to the table's changelog (same partition as the source), then one lone
   sentinel record per touched changelog partition (Tansu reports a partition's end offset as the
   base offset of its last batch + 1; without the sentinel faust's recovery stops short),
4. emits the dirty sessions' records as NDJSON envelopes to ``sessions.v1`` on the source partition,
5. and only then acks the events folded so far (faust's commit flushes the producer first, so a
   committed offset never passes state that is not in the changelog).

Facts are a pure function of the partition's events in offset order (the fold is deterministic and
the restored state is exactly the state of some flush), so after a crash or a rebalance the next owner
re-emits *identical* facts in the same order; the sink skips those at or below the highest
``(src_offset, src_line)`` it already applied per source partition, so rollups count a trace once.

On revoke a partition's state is dropped, never flushed: the next owner restores the changelog and
replays from the committed offset. Changelog keys are ``b"<partition>\\0<session id>"`` so a new
owner can load exactly its partitions' sessions; ``b"<partition>\\0"`` holds the watermark.

faust is imported lazily: importing this module has no side effects.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec

from tracehouse.schemas import (
    TRACE_ID_PATTERN,
    UserTraceFact,
    encode_envelope,
    encode_event,
    envelope_headers,
    split_envelope,
)

from ._config import SessionizerConfig
from ._facts import TraceFacts, facts_from_line
from ._rollup import day_of
from ._session import SessionState, apply, close, close_due, inferred_session_id, loose_key, new_session, seal

if TYPE_CHECKING:
    import faust

log = logging.getLogger("tracehouse.sessionizer")

AGENT_NAME: Final = "tracehouse.sessionizer.fold"
TIMER_NAME: Final = "tracehouse.sessionizer.flush"
TABLE_NAME: Final = "sessions"

_TRACE_ID: Final = re.compile(TRACE_ID_PATTERN)
_state_encoder: Final = msgspec.msgpack.Encoder()
_state_decoder: Final = msgspec.msgpack.Decoder(SessionState)


def state_key(partition: int, session_id: str) -> bytes:
    """Changelog key of a session folded from ``partition``."""
    return b"%d\x00%s" % (partition, session_id.encode())


def watermark_key(partition: int) -> bytes:
    """Changelog key of a partition's watermark; also the sentinel written after every flush."""
    return b"%d\x00" % partition


def parse_watermark(raw: bytes) -> tuple[int, int]:
    """``b"<watermark ms>:<folded offset>"`` (older values: the watermark alone)."""
    wm, _, offset = raw.partition(b":")
    return int(wm), int(offset) if offset else -1


#: Largest envelope the sessionizer sends (Kafka's default ``max.message.bytes`` is 1 MiB).
MAX_ENVELOPE_BYTES: Final = 900_000


def chunks(lines: list[bytes], max_lines: int, max_bytes: int = MAX_ENVELOPE_BYTES) -> Iterable[list[bytes]]:
    """Split ``lines`` into envelopes of at most ``max_lines`` lines and about ``max_bytes`` bytes
    (a single larger line goes alone)."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and (len(chunk) >= max_lines or size + len(line) + 1 > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        yield chunk


def encode_state(state: SessionState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(raw: bytes) -> SessionState:
    return _state_decoder.decode(raw)


@dataclass(slots=True)
class SessionizerStats:
    """Counters of one worker (since it started)."""

    envelopes: int = 0
    traces: int = 0
    #: Traces that changed a session (not duplicates or replays of counted ones).
    new_traces: int = 0
    #: Trace lines with neither a session nor a user id (no session, no rollup).
    sessionless: int = 0
    #: Traces given an inferred session (``infer_sessions``).
    inferred: int = 0
    #: ``user_trace`` facts sent to ``user-rollups.v1``.
    facts_emitted: int = 0
    #: Closed sessions forgotten after ``state_retention_ms``.
    sessions_evicted: int = 0
    #: Lines that were neither events of another type nor decodable (the sink dead-letters them).
    undecodable: int = 0
    flushes: int = 0
    records_emitted: int = 0
    sessions_closed: int = 0
    #: ``time.perf_counter()`` of the first and latest envelope folded.
    first_envelope_at: float | None = None
    last_envelope_at: float | None = None


@dataclass(slots=True)
class _Partition:
    """The state of one source partition this worker owns."""

    sessions: dict[str, SessionState] = field(default_factory=dict)
    open: set[str] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    #: ``infer_sessions``: each user's inferred session ids, oldest first.
    inferred: dict[str, list[str]] = field(default_factory=dict)
    #: Encoded ``user_trace`` facts per ``user-rollups.v1`` partition, in source order.
    outbox: dict[int, list[bytes]] = field(default_factory=dict)
    #: Closed sessions as ``(last_end_ms, session id)``, for eviction (``state_retention_ms``).
    closed: list[tuple[int, str]] = field(default_factory=list)
    #: Source offset of the last event that changed each session (eviction waits for its commit).
    touched_at: dict[str, int] = field(default_factory=dict)
    watermark_ms: int = 0
    #: Watermark at the last full scan for sessions due to close.
    scanned_ms: int = -1
    #: Highest source offset folded (saved with the watermark), and the one restored from the changelog:
    #: a restored session may have been touched up to there, so eviction waits for the commit to pass it.
    folded_offset: int = -1
    restored_offset: int = -1
    #: ``(watermark, folded offset)`` as last written to the changelog.
    saved_watermark: tuple[int, int] = (0, -1)


@dataclass(slots=True)
class _Batch:
    """What one flush writes, encoded before the first await."""

    partition: int
    generation: int
    changelog: list[tuple[bytes, bytes | None]]
    records: list[bytes]
    facts: dict[int, list[bytes]]
    watermark_ms: int
    folded_offset: int


class Sessionizer:
    """A faust app folding traces into sessions, with its state. Build with :func:`create_sessionizer`
    for the app alone, or use :func:`run_sessionizer` / ``python -m tracehouse.processors.sessions``."""

    def __init__(self, config: SessionizerConfig) -> None:
        import faust

        self.config = config
        self.stats = SessionizerStats()
        self._session_config = config.session_config
        self._parts: dict[int, _Partition] = {}
        self._generation: dict[int, int] = {}
        self._pending: list[Any] = []  # faust EventT, acked after their state is flushed
        self._flush_lock = asyncio.Lock()
        topics = config.topics
        self._sessions_topic = topics.sessions
        self._rollups_topic = topics.user_rollups
        self._user_partition: dict[str, int] = {}
        app = faust.App(
            config.app_id,
            broker=f"kafka://{config.bootstrap}",
            autodiscover=False,
            web_enabled=False,
            datadir=config.datadir,
            store="memory://",
            topic_partitions=config.partitions,
            topic_replication_factor=1,
            topic_allow_declare=True,
            table_standby_replicas=0,
            broker_commit_interval=config.commit_interval_s,
            broker_commit_every=10_000,
            broker_max_poll_records=500,
            broker_session_timeout=config.session_timeout_s,
            broker_heartbeat_interval=config.heartbeat_interval_s,
            consumer_auto_offset_reset="earliest",
            stream_buffer_maxsize=4096,
            stream_wait_empty=False,
            producer_linger_ms=5,
            producer_max_batch_size=1 << 20,
            producer_max_request_size=16 << 20,
            producer_acks=-1,  # all in-sync replicas: an acked fact must survive a leader failover
            processing_guarantee="at_least_once",
            key_serializer="raw",
            value_serializer="raw",
        )
        self.app: faust.App = app
        self._traces = app.topic(
            topics.traces, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
            partitions=config.partitions, internal=False,
        )  # fmt: skip
        self.table = app.Table(TABLE_NAME, default=None, partitions=config.partitions, key_type=bytes, value_type=bytes)
        app.agent(self._traces, name=AGENT_NAME)(self._agent)
        app.timer(interval=config.flush_interval_ms / 1000.0, name=TIMER_NAME)(self._on_timer)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # faust's stub is too narrow

    # ------------------------------------------------------------------------------------ folding

    def _partition(self, partition: int, offset: int = 0) -> _Partition:
        """The partition's state, loaded from the (recovered) table on first use."""
        part = self._parts.get(partition)
        if part is not None:
            return part
        part = self._parts[partition] = _Partition()
        prefix = watermark_key(partition)
        for key, raw in self.table.data.items():
            if not key.startswith(prefix) or raw is None:
                continue
            if key == prefix:
                part.watermark_ms, part.restored_offset = parse_watermark(raw)
                part.saved_watermark = (part.watermark_ms, part.restored_offset)
                continue
            state = decode_state(raw)
            sid = state.session_id
            part.sessions[sid] = state
            if state.status == "open":
                part.open.add(sid)
            else:
                part.closed.append((state.last_end_ms, sid))
            if state.inferred and state.user_ids:
                part.inferred.setdefault(min(state.user_ids), []).append(sid)
        heapq.heapify(part.closed)
        for ids in part.inferred.values():
            ids.sort(key=lambda sid: (part.sessions[sid].first_ms, sid))
        part.scanned_ms = part.watermark_ms
        part.folded_offset = max(part.restored_offset, offset - 1)
        if part.sessions:
            log.info("partition %d: restored %d sessions", partition, len(part.sessions))
        else:
            log.info("partition %d: folding from offset %d, no saved sessions", partition, offset)
        return part

    def fold(self, partition: int, lines: Iterable[bytes], offset: int = 0) -> None:
        """Fold the lines of the envelope at ``offset`` of ``partition`` (no await: atomic w.r.t. flushes)."""
        part = self._partition(partition, offset)
        stats = self.stats
        if offset > part.folded_offset:
            part.folded_offset = offset
        horizon = int(time.time() * 1000) + self.config.max_clock_skew_ms
        for index, line in enumerate(lines):
            try:
                facts = facts_from_line(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                stats.undecodable += 1
                continue
            if facts is None:
                continue
            stats.traces += 1
            if part.watermark_ms < facts.timestamp_ms <= horizon:  # a clock far ahead must not close everything
                part.watermark_ms = facts.timestamp_ms
            self._fold_one(part, facts, partition, offset, index)

    def _fold_one(self, part: _Partition, facts: TraceFacts, partition: int, offset: int, index: int) -> None:
        sid = facts.session_id
        user = facts.user_id
        inferred = hidden = False
        if not sid:
            if not user:
                self.stats.sessionless += 1
                return
            if self.config.infer_sessions:
                sid, inferred = self._infer(part, facts, user), True
            else:  # no session: a per-user, per-day state only to count each trace once
                sid, hidden = loose_key(user, day_of(facts.timestamp_ms)), True
        state = part.sessions.get(sid)
        if state is None:
            state = part.sessions[sid] = new_session(facts, sid, inferred=inferred)
            state.hidden = hidden
            if inferred and user:
                ids = part.inferred.setdefault(user, [])
                bisect.insort(ids, sid, key=lambda x: (part.sessions[x].first_ms, x))
        part.touched_at[sid] = offset  # duplicates too: eviction waits until the replay is past them
        if not apply(state, facts):
            return
        self.stats.new_traces += 1
        if inferred:
            self.stats.inferred += 1
        part.dirty.add(sid)
        part.open.add(sid)
        if user and self.config.emit_rollups and _valid_fact(facts, user):
            fact = UserTraceFact(
                user_id=user, trace_id=facts.trace_id, timestamp_ms=facts.timestamp_ms,
                execution_time_ms=facts.execution_time_ms, src_partition=partition, src_offset=offset,
                src_line=index, experiment_id=facts.experiment_id, session_id="" if hidden else sid,
                error=facts.error, input_tokens=facts.input_tokens, output_tokens=facts.output_tokens,
                total_tokens=facts.total_tokens,
            )  # fmt: skip
            part.outbox.setdefault(self._rollup_partition(user), []).append(encode_event(fact))

    def _infer(self, part: _Partition, facts: TraceFacts, user: str) -> str:
        """The inferred session of a session-less trace: the user's session it was already counted in,
        else one whose turns are within the inactivity gap of it, else a new one starting with it."""
        gap = self._session_config.inactivity_gap_ms
        ts = facts.timestamp_ms
        near = None
        for sid in reversed(part.inferred.get(user, ())):
            state = part.sessions[sid]
            if state.seen(facts.trace_id):
                return sid
            if near is None and state.first_ms - gap < ts < state.last_end_ms + gap:
                near = sid
        return near if near is not None else inferred_session_id(user, ts)

    def _rollup_partition(self, user: str) -> int:
        """Kafka's default partition of the key ``user`` (murmur2), as any Kafka client would pick."""
        p = self._user_partition.get(user)
        if p is None:
            from aiokafka.partitioner import murmur2

            if len(self._user_partition) > 100_000:
                self._user_partition.clear()
            p = self._user_partition[user] = (murmur2(user.encode()) & 0x7FFFFFFF) % self.config.rollup_partitions
        return p

    async def _agent(self, stream: Any) -> None:
        async for event in stream.noack().events():
            now = time.perf_counter()
            stats = self.stats
            if stats.first_envelope_at is None:
                stats.first_envelope_at = now
            value = event.value
            if value:
                message = event.message
                self.fold(message.partition, split_envelope(value), message.offset)
            stats.envelopes += 1
            stats.last_envelope_at = now
            self._pending.append(event)

    # ------------------------------------------------------------------------------------ flushing

    def _close_due(self, part: _Partition) -> None:
        """Close the sessions due at the partition's watermark: all open ones when it advanced since
        the last scan, otherwise only the ones that changed (a late turn may reopen an old session)."""
        if part.watermark_ms > part.scanned_ms:
            candidates: Iterable[str] = list(part.open)
            part.scanned_ms = part.watermark_ms
        else:
            candidates = [sid for sid in part.dirty if sid in part.open]
        now_ms = part.watermark_ms
        cfg = self._session_config
        for sid in candidates:
            state = part.sessions[sid]
            if close_due(state, now_ms, cfg):
                close(state)
                part.open.discard(sid)
                part.dirty.add(sid)
                heapq.heappush(part.closed, (state.last_end_ms, sid))
                if not state.hidden:
                    self.stats.sessions_closed += 1

    def _evict(self, partition: int, part: _Partition) -> list[str]:
        """Forget closed sessions whose last turn ended ``state_retention_ms`` before the watermark,
        once every event that touched them is committed (a replay must never meet a session it
        already counted but no longer remembers)."""
        retention = self.config.state_retention_ms
        if retention is None or not part.closed:
            return []
        committed = self._committed(partition)
        if committed is None:
            return []
        horizon = part.watermark_ms - retention
        evicted: list[str] = []
        while part.closed and part.closed[0][0] < horizon:
            last_end, sid = part.closed[0]
            state = part.sessions.get(sid)
            if state is None or state.status != "closed" or state.last_end_ms != last_end:
                heapq.heappop(part.closed)  # stale: evicted or reopened since
                continue
            # restored sessions may have been touched up to the restored offset
            touched = max(part.touched_at.get(sid, -1), part.restored_offset)
            if sid in part.dirty or touched >= committed:
                break
            heapq.heappop(part.closed)
            del part.sessions[sid]
            part.touched_at.pop(sid, None)
            if state.inferred and state.user_ids:
                ids = part.inferred.get(min(state.user_ids), [])
                if sid in ids:
                    ids.remove(sid)
            evicted.append(sid)
        self.stats.sessions_evicted += len(evicted)
        return evicted

    def _committed(self, partition: int) -> int | None:
        """The committed offset of a ``traces.v1`` partition as faust last committed it (a replay
        starts there), or ``None`` if unknown."""
        from faust.types import TP

        committed = getattr(self.app.consumer, "_committed_offset", None)  # faust keeps no public view
        if committed is None:
            return None
        value = committed.get(TP(self._traces.get_topic_name(), partition))
        return int(value) if value is not None else None

    def _snapshot(self) -> list[_Batch]:
        batches = []
        for p, part in self._parts.items():
            self._close_due(part)
            evicted = self._evict(p, part)
            facts, part.outbox = part.outbox, {}
            mark = (part.watermark_ms, part.folded_offset)
            if not part.dirty and not facts and not evicted and mark == part.saved_watermark:
                continue
            part.saved_watermark = mark
            changelog: list[tuple[bytes, bytes | None]] = []
            records = []
            for sid in part.dirty:
                state = part.sessions[sid]
                seal(state)  # 8 bytes a trace id in the changelog, however long the session
                changelog.append((state_key(p, sid), encode_state(state)))
                if not state.hidden:
                    records.append(encode_event(state.to_record()))
            changelog.extend((state_key(p, sid), None) for sid in evicted)
            part.dirty.clear()
            batches.append(_Batch(p, self._generation.get(p, 0), changelog, records, facts, *mark))
        return batches

    def _owned(self, batch: _Batch) -> bool:
        return self._generation.get(batch.partition, 0) == batch.generation

    async def flush(self) -> None:
        """Persist and emit everything folded so far, then ack its events."""
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending and not any(p.dirty or p.outbox for p in self._parts.values()):
            return
        pending, self._pending = self._pending, []
        generations = dict(self._generation)
        batches = self._snapshot()
        producer = self.app.producer
        step = self.config.max_records_per_envelope
        if batches:
            # Every send's future is awaited before the input is acked: a refused or timed-out send
            # raises here, nothing is acked, and the timer stops the worker (see _on_timer).
            sent: list[Any] = []
            for batch in batches:  # 1. facts, durable before the state that counts their traces
                for target, lines in sorted(batch.facts.items()):
                    for chunk in chunks(lines, step):
                        if not self._owned(batch):
                            break
                        sent.append(await producer.send(self._rollups_topic, None, encode_envelope(chunk), target,
                                                        None, envelope_headers(len(chunk))))  # fmt: skip
                        self.stats.facts_emitted += len(chunk)
            await asyncio.gather(*sent)
            sent = []
            changelog_topic = self.table.changelog_topic.get_topic_name()
            for batch in batches:  # 2. state
                for key, value in batch.changelog:
                    if not self._owned(batch):
                        break
                    if value is None:
                        self.table.data.pop(key, None)
                    else:
                        self.table.data[key] = value
                    sent.append(await producer.send(changelog_topic, key, value, batch.partition, None, None))
            await asyncio.gather(*sent)
            sent = []
            for batch in batches:  # each alone in its batch: see the module docstring
                if self._owned(batch):
                    key, wm = watermark_key(batch.partition), b"%d:%d" % (batch.watermark_ms, batch.folded_offset)
                    self.table.data[key] = wm
                    sent.append(await producer.send(changelog_topic, key, wm, batch.partition, None, None))
            for batch in batches:  # 3. session records
                for chunk in chunks(batch.records, step):
                    if not self._owned(batch):
                        break
                    sent.append(await producer.send(self._sessions_topic, None, encode_envelope(chunk), batch.partition,
                                                    None, envelope_headers(len(chunk))))  # fmt: skip
                    self.stats.records_emitted += len(chunk)
            await asyncio.gather(*sent)
        for event in pending:  # not the events of partitions revoked meanwhile: their next owner replays them
            p = event.message.partition
            if self._generation.get(p, 0) == generations.get(p, 0):
                event.ack()
        self.stats.flushes += 1

    async def _on_timer(self) -> None:
        try:
            await self.flush()
        except Exception as exc:
            # Facts or state may be half sent: only a replay from the committed offsets is safe.
            log.error("flush failed; stopping the worker so its partitions are replayed: %r", exc)
            await self.app.crash(exc)

    async def _on_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Drop (never flush) revoked partitions: the next owner replays from the committed offset,
        which never passes state missing from the changelog. faust calls this as ``(sender, revoked)``."""
        revoked: Iterable[Any] = args[0] if args else kwargs.get("revoked", ())
        parts = {tp.partition for tp in revoked if tp.topic == self._traces.get_topic_name()}
        for p in parts:
            self._parts.pop(p, None)
            self._generation[p] = self._generation.get(p, 0) + 1
        self._pending = [e for e in self._pending if e.message.partition not in parts]
        if parts:
            log.info("revoked partitions %s: state dropped", sorted(parts))


def _valid_fact(facts: TraceFacts, user: str) -> bool:
    """Whether a trace's fact passes the contract (the sink would dead-letter it otherwise)."""
    return len(user) <= 250 and _TRACE_ID.match(facts.trace_id) is not None and 0 < len(facts.experiment_id) <= 64


def create_sessionizer(config: SessionizerConfig) -> faust.App:
    """A finalized-on-start faust app running the sessionizer (nothing runs until it is started)."""
    return Sessionizer(config).app


async def run_sessionizer(
    config: SessionizerConfig, stop: asyncio.Event, *, sessionizer: Sessionizer | None = None
) -> SessionizerStats:
    """Run the sessionizer in this event loop until ``stop`` is set; flush, then stop. Pass
    ``sessionizer`` to watch its :attr:`Sessionizer.stats` while it runs."""
    worker = sessionizer if sessionizer is not None else Sessionizer(config)
    app = worker.app
    app.finalize()
    await app.start()
    try:
        await stop.wait()
        await worker.flush()
    finally:
        await app.stop()
    return worker.stats
