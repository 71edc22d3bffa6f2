"""The sessionizer: a faust worker folding ``traces.v1`` into session records on ``sessions.v1``.

Design (measured in ``docs/design/faust-spike``): one agent reads envelopes with
``stream.noack().events()`` and folds their ``trace`` lines (``_fold``); the agent body never awaits,
so a flush never sees half an envelope. A timer flushes every ``flush_interval_ms`` (``_emit``) and
only then acks the events folded.

Facts are a pure function of the partition's events in offset order (the fold is deterministic and
the restored state is exactly the state of some flush), so after a crash or a rebalance the next owner
re-emits *identical* facts in the same order; the sink skips those at or below the highest
``(src_offset, src_line)`` it already applied per source partition, so rollups count a trace once.

On revoke a partition's state is dropped, never flushed: the next owner restores the changelog and
replays from the committed offset.

With a store (``tracehouse up`` shares the sink's; apart, a ClickHouse server), the sessionizer also
reads back what its changelog does not hold (``_source``): on a new broker epoch it continues the open
sessions and the event time of each partition where the store left them, and it loads a session it
evicted (or never saw in this epoch) before folding its next trace. Closed sessions are then evicted
after ``state_retention_ms`` (default :data:`DEFAULT_RETENTION_WITH_STORE_MS`), once the store holds them
exactly. The broker epoch is checked every :data:`EPOCH_CHECK_S`: a broker that lost its data stops the
worker (its state went with the broker), to be restarted.

faust is imported lazily: importing this module has no side effects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from tracehouse.schemas import split_envelope
from tracehouse.schemas.kafka import producer_compression
from tracehouse.storage import Store

from .._epoch import read_epoch
from ._config import SessionizerConfig
from ._emit import Emitter, Evictions, FlushBatch, snapshot
from ._facts import TraceFacts
from ._fold import Folder, PartitionFold, SessionizerStats
from ._holes import HoleReader
from ._source import StoreSource

if TYPE_CHECKING:
    import faust

log = logging.getLogger("tracehouse.sessionizer")

AGENT_NAME: Final = "tracehouse.sessionizer.fold"
TIMER_NAME: Final = "tracehouse.sessionizer.flush"
TABLE_NAME: Final = "sessions"
#: How long a refused offset hole may last before it is taken as a real gap in the topic.
HOLE_PATIENCE_S: Final = 60.0
#: With a store to reload them from (exactly, and at the cost of one lookup), closed sessions are
#: forgotten this long after they closed: memory holds the open sessions and the last minutes' closed
#: ones. (It was 1 h from the last turn: in the soak at 1,000 traces/s, about 5 KB per session, the
#: state grew for the whole hour.)
DEFAULT_RETENTION_WITH_STORE_MS: Final = 120_000
EPOCH_CHECK_S: Final = 10.0


class EpochChanged(RuntimeError):
    """The broker lost its data while this worker ran: its state (in the broker) is gone."""


def _never_commit_over_a_hole() -> None:
    """faust-streaming 0.15.3 commits past an offset that was never acked when it is the only one
    missing (faust-streaming#606: ``min(acked) - committed > 1`` where ``committed`` is already the next
    offset to read). Commit nothing while the first acked offset is past the committed one and faust
    knows of no gap to fill; once the hole is acked (``_contiguous`` reads it again) commits resume."""
    from faust.transport.consumer import Consumer

    original = Consumer._new_offset
    if getattr(original, "tracehouse_guard", False):
        return

    def new_offset(self: Any, tp: Any) -> int | None:
        acked, committed = self._acked[tp], self._committed_offset[tp]
        if acked and committed is not None and min(acked) > committed and not self._gap[tp]:
            return None
        result: int | None = original(self, tp)
        return result

    new_offset.tracehouse_guard = True  # type: ignore[attr-defined]
    Consumer._new_offset = new_offset  # type: ignore[method-assign]


class Sessionizer:
    """A faust app folding traces into sessions, with its state. Build with :func:`create_sessionizer`
    for the app alone, or use :func:`run_sessionizer` / ``tracehouse sessionizer``."""

    def __init__(self, config: SessionizerConfig, store: Store | None = None) -> None:
        import faust

        _never_commit_over_a_hole()
        self.config = config
        self.stats = SessionizerStats()
        self.folder = Folder(config, self.stats)
        self.source = StoreSource(store, config.partitions) if store is not None else None
        if self.source is not None and config.state_retention_ms is None:
            self.folder.retention_ms = config.inactivity_gap_ms + DEFAULT_RETENTION_WITH_STORE_MS
        self.epoch: str | None = None
        self._epoch_checked = 0.0
        self._holes = HoleReader(config.bootstrap)
        self._generation: dict[int, int] = {}
        #: The cut (``hold``): per partition, the first offset this worker will not fold.
        self._holds: dict[int, int] = {}
        self._pending: list[Any] = []  # faust EventT, acked after their state is flushed
        self._flush_lock = asyncio.Lock()
        topics = config.topics
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
            producer_compression_type=producer_compression(config.compression),
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
        self._sessions_topic = topics.sessions
        self._rollups_topic = topics.user_rollups
        app.agent(self._traces, name=AGENT_NAME)(self._agent)
        app.timer(interval=config.flush_interval_ms / 1000.0, name=TIMER_NAME)(self._on_timer)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # faust's stub is too narrow

    # ------------------------------------------------------------------------------------ folding

    def fold(self, partition: int, lines: Iterable[bytes], offset: int = 0) -> None:
        """Fold the lines of the envelope at ``offset`` of ``partition`` (no await: atomic w.r.t. flushes)."""
        self.folder.fold(partition, lines, offset, self.table.data)

    async def _agent(self, stream: Any) -> None:
        async for event in stream.noack().events():
            now = time.perf_counter()
            stats = self.stats
            if stats.first_envelope_at is None:
                stats.first_envelope_at = now
            message = event.message
            if (hold := self._holds.get(message.partition)) is not None and message.offset >= hold:
                continue  # past the cut: neither folded nor acked
            if self.epoch is None:
                await self.enter_epoch()
            if not self._contiguous(message.partition, message.offset) and not await self._fill_hole(message):
                await self._reread(message.partition)
                continue  # neither folded nor acked: it comes again after the hole
            if not await self._fold_envelope(message.partition, message.offset, event.value):
                continue  # revoked while loading: its next owner folds it
            stats.envelopes += 1
            stats.last_envelope_at = now
            self._pending.append(event)

    async def _fold_envelope(self, partition: int, offset: int, value: bytes | None) -> bool:
        """Parse, read back from the store what folding needs (with a source), fold. ``False`` when the
        partition was revoked meanwhile."""
        if value:
            parsed = self.folder.parse(split_envelope(value))
            if self.source is not None and not await self._load(partition, offset, parsed):
                return False
            self.folder.fold_parsed(partition, parsed, offset, self.table.data)
        return True

    async def _fill_hole(self, message: Any) -> bool:
        """An envelope arrived past the offset the state was folded up to, and faust will not deliver
        the ones in between: it restored an older state than the previous owner committed (they are
        below the committed offset), or it lost a record in its recovery seek (faust-streaming#596).
        Read them outside faust (``_holes``) and fold them first; the next flush acks them
        (:meth:`_ack_folded`). ``False`` if they could not be read (the caller seeks back and waits)."""
        partition, offset = message.partition, message.offset
        part = self.folder.parts.get(partition)
        if part is None:
            return False
        start = part.folded_offset + 1
        records = await self._holes.read(message.topic, partition, start, offset)
        if records is None or self.folder.parts.get(partition) is not part:
            return False
        if records:
            log.warning("partition %d: folding %d envelopes at offsets %d to %d, which faust did not deliver, from "
                        "a read of their own (committed offset: %s)", partition, len(records), start, offset - 1,
                        self._committed(partition))  # fmt: skip
        else:
            log.info("partition %d: offsets %d to %d hold no records (a gap in the log)", partition, start,
                     offset - 1)  # fmt: skip
        for record_offset, value in records:
            if not await self._fold_envelope(partition, record_offset, value):
                return False
        self.stats.offset_holes_filled += 1
        part.hole = None
        return True

    def _folded(self) -> dict[int, int]:
        """Per partition: the offset folded through (what a flush of now persists)."""
        return {p: part.folded_offset for p, part in self.folder.parts.items()}

    def _ack_folded(self, folded: dict[int, int], generations: dict[int, int]) -> None:
        """Ack, in faust's books, the offsets from the committed one up to what the flush just persisted
        (``folded``: each partition's folded offset at its snapshot) that faust never acked: a commit
        may then pass them. They are in the flushed state, whether faust delivered them or not: read
        by :meth:`_fill_hole`, or restored from the changelog while faust dropped their records in its
        recovery seek (faust-streaming#596; then no hole shows, as they are below the folded offset,
        but faust's commit would wait for them for ever)."""
        from faust.types import TP

        consumer: Any = self.app.consumer
        for partition, upto in folded.items():
            if self._generation.get(partition, 0) != generations.get(partition, 0):
                continue  # revoked meanwhile: the next owner replays them
            tp = TP(self._traces.get_topic_name(), partition)
            committed = consumer._committed_offset.get(tp)
            index, acked = consumer._acked_index[tp], consumer._acked[tp]
            if committed is None:
                continue
            end = min(min(acked), upto + 1) if acked else upto + 1
            for offset in range(committed, end):
                if offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    consumer._n_acked += 1

    # ------------------------------------------------------------------------------------- the cut

    def positions(self) -> dict[int, int]:
        """Per partition this worker folds: the first offset it has not folded."""
        return {p: offset + 1 for p, offset in self._folded().items()}

    def hold(self, offsets: dict[int, int]) -> None:
        """Fold nothing at or past ``offsets[partition]`` from now on (those events are not acked
        either): a cut the sink of ``tracehouse up`` stops at too (``Sink.hold``)."""
        self._holds.update(offsets)

    def reached(self, offsets: dict[int, int]) -> bool:
        """Whether everything below ``offsets[partition]`` is folded, on every partition."""
        parts = self.folder.parts
        return all(o <= 0 or (p in parts and parts[p].folded_offset + 1 >= o) for p, o in offsets.items())

    # ------------------------------------------------------------------------------- epoch and store

    async def enter_epoch(self) -> str:
        """Read the broker epoch; with a store, wait until the sink registered it there (after it
        reconciled what an unclean stop left), so what is read back is what to continue."""
        epoch = await read_epoch(self.config.bootstrap, self.config.topics.epoch)
        assert epoch is not None
        if self.source is not None:
            await asyncio.to_thread(self.source.wait_epoch, epoch)
        self.epoch = epoch
        self._epoch_checked = time.monotonic()
        return epoch

    async def _check_epoch(self) -> None:
        if self.epoch is None or time.monotonic() - self._epoch_checked < EPOCH_CHECK_S:
            return
        self._epoch_checked = time.monotonic()
        current = await read_epoch(self.config.bootstrap, self.config.topics.epoch, create=False)
        if current is not None and current != self.epoch:
            raise EpochChanged(f"the broker's epoch changed from {self.epoch} to {current}: the broker lost "
                               "its data and with it this sessionizer's state; restart the sessionizer")  # fmt: skip

    async def _load(self, partition: int, offset: int, parsed: list[tuple[int, TraceFacts]]) -> bool:
        """Read back from the store what folding ``parsed`` needs and this worker does not hold: on a
        partition's first use in an epoch, its open sessions and event time; then any session (or day of
        a user's session-less traces) not in memory. ``False`` if the partition was revoked meanwhile."""
        source = self.source
        assert source is not None
        part = self.folder.partition(partition, self.table.data, offset)
        generation = self._generation.get(partition, 0)

        def owned() -> bool:
            return self.folder.parts.get(partition) is part and self._generation.get(partition, 0) == generation

        if part.fresh:
            part.fresh = False
            source.forget_recorded()
            states = await asyncio.to_thread(source.open_sessions, partition, part.folded_offset)
            watermark = await asyncio.to_thread(source.watermark, partition)
            if not owned():
                return False
            self.folder.adopt(part, states)
            part.watermark_ms = max(part.watermark_ms, watermark)
            part.scanned_ms = -1
            self.stats.sessions_loaded += len(states)
            if states:
                log.info("partition %d: continuing %d open sessions from the store", partition, len(states))
        missing = self.folder.missing(part, parsed)
        if missing:
            states = await asyncio.to_thread(source.load, missing, part.folded_offset)
            if not owned():
                return False
            self.folder.adopt(part, states)
            self.stats.sessions_loaded += len(states)
        return True

    async def _confirm_evictions(self) -> Evictions | None:
        """With a store: the closed sessions due for eviction, and those the store holds exactly."""
        if self.source is None:
            return None
        source = self.source
        candidates = {}
        for p, part in self.folder.parts.items():
            if states := self.folder.evictable(part, self._committed(p)):
                candidates[p] = (part, states)
        if not candidates:
            return {}
        try:
            confirmed = await asyncio.to_thread(
                lambda: {p: source.confirm(states, part.folded_offset) for p, (part, states) in candidates.items()}
            )
        except Exception:
            for part, states in candidates.values():
                self.folder.evict(part, states, set())  # queue them again
            raise
        return {p: (states, confirmed[p]) for p, (_, states) in candidates.items()}

    def _contiguous(self, partition: int, offset: int) -> bool:
        """Whether ``offset`` comes right after what was folded (or again: folding is idempotent).

        faust-streaming 0.15.3 can lose the record fetched while it seeks a partition after table
        recovery (faust-streaming#596) and then commits over the gap (#606); a hole refused here is read
        again. A hole that persists for ``HOLE_PATIENCE_S`` is accepted (a producer with transactions
        leaves real offset gaps) and logged."""
        part = self.folder.partition(partition, self.table.data, offset)
        if offset <= part.folded_offset + 1:
            part.hole = None
            return True
        now = time.monotonic()
        if part.hole is None or part.hole[0] != part.folded_offset + 1:
            part.hole = (part.folded_offset + 1, now)
            self.stats.offset_holes += 1
            log.warning("partition %d: offset %d arrived before %d; reading again from %d",
                        partition, offset, part.folded_offset + 1, part.folded_offset + 1)  # fmt: skip
        elif now - part.hole[1] > HOLE_PATIENCE_S:
            log.error("partition %d: offsets %d to %d never arrived; going on from %d",
                      partition, part.hole[0], offset - 1, offset)  # fmt: skip
            part.hole = None
            part.folded_offset = offset - 1
            return True
        return False

    async def _reread(self, partition: int) -> None:
        """Seek the partition back to the first offset not folded (it also resets faust's read offset)."""
        from faust.types import TP

        part = self.folder.parts.get(partition)
        if part is not None and part.hole is not None:
            await self.app.consumer.seek(TP(self._traces.get_topic_name(), partition), part.hole[0])

    # ------------------------------------------------------------------------------------ flushing

    def _committed(self, partition: int) -> int | None:
        """The committed offset of a ``traces.v1`` partition as faust last committed it (a replay
        starts there), or ``None`` if unknown."""
        from faust.types import TP

        committed = getattr(self.app.consumer, "_committed_offset", None)  # faust keeps no public view
        if committed is None:
            return None
        value = committed.get(TP(self._traces.get_topic_name(), partition))
        return int(value) if value is not None else None

    @property
    def _parts(self) -> dict[int, PartitionFold]:
        """The fold's partitions (what a flush writes)."""
        return self.folder.parts

    def _snapshot(self, evictions: Evictions | None = None) -> list[FlushBatch]:
        """Close, evict and encode what the next flush writes (``_emit.snapshot``)."""
        return snapshot(self.folder, dict(self._generation), self._committed, evictions)

    def _owned(self, batch: FlushBatch) -> bool:
        return self._generation.get(batch.partition, 0) == batch.generation

    async def flush(self) -> None:
        """Persist and emit everything folded so far, then ack its events (see ``_emit``)."""
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        evictions = await self._confirm_evictions()
        parts = self.folder.parts.values()
        if not self._pending and not any(p.dirty or p.outbox for p in parts) and not evictions:
            # nothing unflushed: every partition's folded offset is persisted (faust may commit again now)
            self._ack_folded(self._folded(), dict(self._generation))
            return
        pending, self._pending = self._pending, []
        generations = dict(self._generation)
        folded = self._folded()  # what this snapshot holds
        batches = self._snapshot(evictions)
        if batches:
            emitter = Emitter(
                producer=self.app.producer, table=self.table.data,
                changelog_topic=self.table.changelog_topic.get_topic_name(), sessions_topic=self._sessions_topic,
                rollups_topic=self._rollups_topic, max_lines=self.config.max_records_per_envelope, owned=self._owned,
            )  # fmt: skip
            facts, records = await emitter.send(batches)
            self.stats.facts_emitted += facts
            self.stats.records_emitted += records
        for event in pending:  # not the events of partitions revoked meanwhile: their next owner replays them
            p = event.message.partition
            if self._generation.get(p, 0) == generations.get(p, 0):
                event.ack()
        self._ack_folded(folded, generations)
        self.stats.flushes += 1

    async def _on_timer(self) -> None:
        try:
            await self._check_epoch()
        except EpochChanged as exc:
            log.error("%s", exc)
            await self.app.crash(exc)
            return
        except Exception as exc:  # the broker is unreachable: the consumer reports that; try again later
            log.debug("could not read the broker epoch: %r", exc)
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
            self.folder.parts.pop(p, None)
            self._generation[p] = self._generation.get(p, 0) + 1
        self._pending = [e for e in self._pending if e.message.partition not in parts]
        if parts:
            log.info("revoked partitions %s: state dropped", sorted(parts))


def create_sessionizer(config: SessionizerConfig, store: Store | None = None) -> faust.App:
    """A finalized-on-start faust app running the sessionizer (nothing runs until it is started)."""
    return Sessionizer(config, store).app


async def run_sessionizer(
    config: SessionizerConfig, stop: asyncio.Event, *, sessionizer: Sessionizer | None = None,
    store: Store | None = None,
) -> SessionizerStats:
    """Run the sessionizer in this event loop until ``stop`` is set; flush, then stop. Pass
    ``sessionizer`` to watch its :attr:`Sessionizer.stats` while it runs, or ``store`` to let it read
    sessions back (see the module docstring)."""
    worker = sessionizer if sessionizer is not None else Sessionizer(config, store)
    app = worker.app
    app.finalize()
    await app.start()
    try:
        await stop.wait()
        await worker.flush()
    finally:
        await app.stop()
        await worker._holes.close()
    return worker.stats
