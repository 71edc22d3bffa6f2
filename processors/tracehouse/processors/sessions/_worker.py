"""The sessionizer: a faust worker folding ``traces.v1`` into session records on ``sessions.v1``.

Design (measured in ``docs/design/faust-spike``): one agent reads envelopes with
``stream.noack().events()`` and folds their ``trace`` lines into a plain dict of
:class:`SessionState` per source partition with the pure :func:`apply` (idempotent, so replays are
harmless). The agent body never awaits, so a flush never sees half an envelope. Every
``flush_interval_ms`` a timer

1. closes the sessions due at the partition's event-time watermark (max trace time seen there),
2. writes the dirty states to the table's changelog (same partition as the source), then one lone
   sentinel record per touched changelog partition (Tansu reports a partition's end offset as the
   base offset of its last batch + 1; without the sentinel faust's recovery stops short),
3. emits the dirty sessions' records as NDJSON envelopes to ``sessions.v1`` on the source partition,
4. and only then acks the events folded so far (faust's commit flushes the producer first, so a
   committed offset never passes state that is not in the changelog).

On revoke a partition's state is dropped, never flushed: the next owner restores the changelog and
replays from the committed offset. Changelog keys are ``b"<partition>\\0<session id>"`` so a new
owner can load exactly its partitions' sessions; ``b"<partition>\\0"`` holds the watermark.

faust is imported lazily: importing this module has no side effects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec

from tracehouse.schemas import encode_envelope, encode_event, envelope_headers, split_envelope

from ._config import SessionizerConfig
from ._facts import TraceFacts, facts_from_line
from ._session import SessionState, apply, close, close_due, new_session

if TYPE_CHECKING:
    import faust

log = logging.getLogger("tracehouse.sessionizer")

AGENT_NAME: Final = "tracehouse.sessionizer.fold"
TIMER_NAME: Final = "tracehouse.sessionizer.flush"
TABLE_NAME: Final = "sessions"

_state_encoder: Final = msgspec.msgpack.Encoder()
_state_decoder: Final = msgspec.msgpack.Decoder(SessionState)


def state_key(partition: int, session_id: str) -> bytes:
    """Changelog key of a session folded from ``partition``."""
    return b"%d\x00%s" % (partition, session_id.encode())


def watermark_key(partition: int) -> bytes:
    """Changelog key of a partition's watermark; also the sentinel written after every flush."""
    return b"%d\x00" % partition


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
    #: Trace lines without a session id (ignored for now).
    sessionless: int = 0
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
    watermark_ms: int = 0
    #: Watermark at the last full scan for sessions due to close.
    scanned_ms: int = -1


@dataclass(slots=True)
class _Batch:
    """What one flush writes, encoded before the first await."""

    partition: int
    generation: int
    changelog: list[tuple[bytes, bytes]]
    records: list[bytes]
    watermark_ms: int


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
            producer_acks=1,
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

    def _partition(self, partition: int) -> _Partition:
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
                part.watermark_ms = int(raw)
                continue
            state = decode_state(raw)
            part.sessions[state.session_id] = state
            if state.status == "open":
                part.open.add(state.session_id)
        part.scanned_ms = part.watermark_ms
        if part.sessions:
            log.info("partition %d: restored %d sessions", partition, len(part.sessions))
        return part

    def fold(self, partition: int, lines: Iterable[bytes]) -> None:
        """Fold the lines of one envelope from ``partition`` (no await: atomic w.r.t. flushes)."""
        part = self._partition(partition)
        stats = self.stats
        for line in lines:
            try:
                facts = facts_from_line(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                stats.undecodable += 1
                continue
            if facts is None:
                continue
            stats.traces += 1
            if facts.timestamp_ms > part.watermark_ms:
                part.watermark_ms = facts.timestamp_ms
            self._fold_one(part, facts)

    def _fold_one(self, part: _Partition, facts: TraceFacts) -> None:
        sid = facts.session_id
        if not sid:
            self.stats.sessionless += 1
            return
        state = part.sessions.get(sid)
        if state is None:
            state = part.sessions[sid] = new_session(facts, sid)
        if apply(state, facts):
            self.stats.new_traces += 1
            part.dirty.add(sid)
            part.open.add(sid)

    async def _agent(self, stream: Any) -> None:
        async for event in stream.noack().events():
            now = time.perf_counter()
            stats = self.stats
            if stats.first_envelope_at is None:
                stats.first_envelope_at = now
            value = event.value
            if value:
                self.fold(event.message.partition, split_envelope(value))
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
                self.stats.sessions_closed += 1

    def _snapshot(self) -> list[_Batch]:
        batches = []
        for p, part in self._parts.items():
            self._close_due(part)
            if not part.dirty:
                continue
            changelog = []
            records = []
            for sid in part.dirty:
                state = part.sessions[sid]
                changelog.append((state_key(p, sid), encode_state(state)))
                records.append(encode_event(state.to_record()))
            part.dirty.clear()
            batches.append(_Batch(p, self._generation.get(p, 0), changelog, records, part.watermark_ms))
        return batches

    def _owned(self, batch: _Batch) -> bool:
        return self._generation.get(batch.partition, 0) == batch.generation

    async def flush(self) -> None:
        """Persist and emit everything folded so far, then ack its events."""
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending and not any(p.dirty for p in self._parts.values()):
            return
        pending, self._pending = self._pending, []
        generations = dict(self._generation)
        batches = self._snapshot()
        producer = self.app.producer
        if batches:
            changelog_topic = self.table.changelog_topic.get_topic_name()
            for batch in batches:
                if not self._owned(batch):
                    continue
                for key, value in batch.changelog:
                    self.table.data[key] = value
                    await producer.send(changelog_topic, key, value, batch.partition, None, None)
            await producer.flush()
            for batch in batches:  # each alone in its batch: see the module docstring
                if self._owned(batch):
                    key, wm = watermark_key(batch.partition), str(batch.watermark_ms).encode()
                    self.table.data[key] = wm
                    await producer.send(changelog_topic, key, wm, batch.partition, None, None)
            step = self.config.max_records_per_envelope
            for batch in batches:
                for i in range(0, len(batch.records), step):
                    if not self._owned(batch):
                        break
                    chunk = batch.records[i : i + step]
                    await producer.send(
                        self._sessions_topic, None, encode_envelope(chunk), batch.partition, None,
                        envelope_headers(len(chunk)),
                    )  # fmt: skip
                    self.stats.records_emitted += len(chunk)
        for event in pending:  # not the events of partitions revoked meanwhile: their next owner replays them
            p = event.message.partition
            if self._generation.get(p, 0) == generations.get(p, 0):
                event.ack()
        self.stats.flushes += 1

    async def _on_timer(self) -> None:
        await self.flush()

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
