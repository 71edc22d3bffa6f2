"""The sink: Kafka envelopes in, ClickHouse rows out, offsets committed only after the rows are stored.

A record meets these steps in order, each a module with its contract in its docstring (as arroyo's
strategies are):

1. **poll** (here): ``getmany`` from every assigned partition that is not paused. Must not block
   longer than the next due batch or retry, nor keep a stop waiting.
2. **seek** and **ledger** (``_assign``): pin each newly assigned partition to its committed offset;
   bound the first batch by the ledger row that starts there, if any.
3. **decode** (``_decode``): split the envelope, validate each line, append rows to the partition's
   batch (``_batch``); dead-letter bad lines (``_dlq``, beside the chain).
4. **write** (``_write``, in a worker thread): first write wins, the ledger row, the rows with the
   batch's deduplication token.
5. **flush/commit** (``_commit``): when a batch is full, old, or final (revoke, stop): write it, wait
   for its dead letters, then commit ``last + 1``. Commit is the last step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from tracehouse.schemas.kafka import producer_compression
from tracehouse.storage import Ledger, Store

from ._assign import Rebalance, check_ledger, pin, try_enter_epoch
from ._batch import BatchLimits, PartitionBatch
from ._commit import flush, flush_due, flush_final
from ._config import SinkConfig
from ._decode import decode_into
from ._dlq import DeadLetterProducer, DeadLetterWarnings
from ._state import Partition, PartitionState, SinkState, SinkStats

log = logging.getLogger("tracehouse.sink")

T = TypeVar("T")
_CLOSE_TIMEOUT_S = 15.0


class _Stopped(Exception):
    """A stop was requested while the sink waited on Kafka."""


class Sink:
    """Consume trace envelopes and write them to ClickHouse, exactly once in effect.

    ``store`` may be shared with other components of the process (e.g. an HTTP server); when it is
    ``None`` the sink opens ``config.store_uri`` on :meth:`run` and closes it when it stops.
    The store must already be migrated: the sink never runs DDL.
    """

    def __init__(self, config: SinkConfig, store: Store | None = None) -> None:
        self.config = config
        self._owns_store = store is None
        limits = BatchLimits(max_rows=config.max_batch_rows, max_bytes=config.max_batch_bytes,
                             max_age_s=config.max_batch_age_ms / 1000)  # fmt: skip
        self._state = SinkState(config=config, store=store, limits=limits,
                                warnings=DeadLetterWarnings(config.dlq_log_interval_s))  # fmt: skip
        self._stop_requested = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False

    @classmethod
    def from_uri(cls, config: SinkConfig, store_uri: str | None = None) -> Sink:
        """A sink that opens (and owns) the store at ``store_uri`` or ``config.store_uri``."""
        if store_uri is not None and store_uri != config.store_uri:
            config = replace(config, store_uri=store_uri)
        return cls(config)

    @property
    def store(self) -> Store | None:
        return self._state.store

    # ------------------------------------------------------------------ public API

    def stats(self) -> SinkStats:
        return self._state.stats()

    def committed_offsets(self) -> dict[Partition, int]:
        """Next offset to read per partition: every record below it is in ClickHouse."""
        return dict(self._state.committed)

    def caught_up(self) -> bool:
        """True when every assigned partition has committed up to the high watermark its last fetch
        reported (or up to its hold, if lower): everything the broker held then is in ClickHouse.
        (Fetch high watermarks, unlike Tansu's ListOffsets answers, are exact.)"""
        state = self._state
        if state.consumer is None or not state.parts:
            return False
        for key, part in state.parts.items():
            target = state.consumer.highwater(part.tp)
            if (hold := state.holds.get(key)) is not None:
                target = hold if target is None else min(target, hold)
            if target is None or state.committed.get(key, 0) < target:
                return False
        return True

    def positions(self, topic: str) -> dict[int, int] | None:
        """Per assigned partition of ``topic``: the offset past everything this sink has taken,
        committed or seen its broker hold (the last fetch's high watermark). ``None`` while a partition
        is not pinned yet (its position is unknown)."""
        state = self._state
        found: dict[int, int] = {}
        for (t, p), part in state.parts.items():
            if t != topic:
                continue
            if not part.pinned or part.lost or state.consumer is None:
                return None
            highwater = state.consumer.highwater(part.tp)
            found[p] = max(part.next_offset or 0, state.committed.get((t, p), 0), highwater or 0)
        return found

    def highwaters(self, topic: str) -> dict[int, int]:
        """Per assigned partition of ``topic`` whose high watermark a fetch has reported: that offset
        (the end of what the broker held then; a fetch long-polls at most 0.5 s, so within that time of
        a producer's acknowledgement it shows here)."""
        state = self._state
        if state.consumer is None:
            return {}
        found: dict[int, int] = {}
        for (t, p), part in state.parts.items():
            if t == topic and (highwater := state.consumer.highwater(part.tp)) is not None:
                found[p] = highwater
        return found

    def hold(self, offsets: Mapping[Partition, int]) -> None:
        """Take no record at or past ``offsets[(topic, partition)]`` from now on: the partition is
        paused there, and what was taken below it is written and committed as usual (a cut, see
        ``tracehouse.app.embedded._processors``). Call it between two steps of the loop (from the
        loop's thread, without awaiting in between) so that nothing past the cut is taken."""
        self._state.holds.update(offsets)

    async def wait_committed(self, offsets: Mapping[Partition, int], timeout_s: float | None = None) -> bool:
        """Wait until the record at each ``(topic, partition) -> offset`` is stored and committed by
        this sink (read-your-writes). Returns ``False`` on timeout."""
        state = self._state

        def reached() -> bool:
            return all(state.committed.get((t, p), -1) > off for (t, p), off in offsets.items())

        async def wait() -> None:
            async with state.commit_cond:
                await state.commit_cond.wait_for(reached)

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
        cfg, state = self.config, self._state
        if state.store is None:
            state.store = await asyncio.to_thread(Store, cfg.store_uri)
        state.ledger = Ledger(state.store, state.scope)
        state.dlq = DeadLetterProducer(cfg.bootstrap, cfg.dead_letter_topic, acks=cfg.dlq_acks,
                                       client_id=f"{cfg.client_id}-dlq", max_request_size=cfg.dlq_max_request_size,
                                       compression=producer_compression(cfg.compression))
        state.consumer = AIOKafkaConsumer(
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
            await self._or_stop(state.dlq.start())
            await self._or_stop(state.consumer.start())
        except _Stopped:
            return
        state.consumer.subscribe(list(cfg.source_topics), listener=Rebalance(state))
        log.info(
            "sink consuming %s as group %s into %s (dead letters to %s)",
            ", ".join(cfg.source_topics), cfg.group_id, state.store.uri, cfg.dead_letter_topic,
        )  # fmt: skip

    async def _drain(self) -> None:
        """Flush and commit every batch that may be flushed; bounded by ``drain_timeout_s``."""
        state = self._state
        if state.consumer is None:
            return
        async with state.lock:
            deadline = time.monotonic() + self.config.drain_timeout_s
            for part in list(state.parts.values()):
                await flush_final(state, part, deadline, "stop")
        state.warnings.emit()

    async def _close(self) -> None:
        state = self._state
        consumer, state.consumer = state.consumer, None
        dlq, state.dlq = state.dlq, None
        for name, client in (("consumer", consumer), ("dead-letter producer", dlq)):
            if client is None:
                continue
            try:
                await asyncio.wait_for(client.stop(), _CLOSE_TIMEOUT_S)
            except Exception as exc:  # includes the timeout: closing must not hang the process
                log.warning("closing the %s failed: %r", name, exc)
        state.parts.clear()
        if self._owns_store and state.store is not None and not state.stuck:  # a stuck write holds it
            store, state.store = state.store, None
            await asyncio.to_thread(store.close)
        log.info("sink stopped: %s", self.stats())

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
        """Step *poll*, then *seek* for new partitions, *decode* the records, and *flush* what is due."""
        state = self._state
        try:
            fetched = await self._or_stop(
                state.consumer.getmany(timeout_ms=self._poll_timeout_ms(), max_records=self.config.max_poll_records)
            )
        except _Stopped:
            return
        async with state.lock:
            # Records fetched before a partition was pinned may predate the assignment: drop them,
            # the seek makes the consumer fetch them again from the committed offset.
            pinned_now: set[Partition] = set()
            epoch_ok = await try_enter_epoch(state)
            for key, part in list(state.parts.items()):
                if epoch_ok and not part.pinned and not part.lost and part.retry_at is None:
                    await pin(state, part)
                    pinned_now.add(key)
            for tp, records in fetched.items():
                key = (tp[0], tp[1])
                taker = state.parts.get(key)
                if taker is None or taker.lost or not taker.pinned or key in pinned_now:
                    continue
                await self._take(taker, records)
            await flush_due(state)
        state.warnings.maybe_emit()

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        wait = self.config.poll_timeout_ms / 1000
        for part in self._state.parts.values():
            if part.retry_at is not None:
                wait = min(wait, part.retry_at - now)
            elif part.batch is not None and (due := part.batch.due_at(self._state.limits)) is not None:
                wait = min(wait, due - now)
        return max(0, int(wait * 1000))

    async def _take(self, part: PartitionState, records: list[Any]) -> None:
        """Steps *ledger* and *decode* for consecutive records of one partition, flushing when a batch
        is full. On a failure the partition is rewound to the first record not taken."""
        state = self._state
        key = (part.tp[0], part.tp[1])
        for i, rec in enumerate(records):
            offset: int = rec.offset
            if part.next_offset is not None and offset < part.next_offset:
                continue  # already taken (re-delivered after a rewind)
            if (hold := state.holds.get(key)) is not None and offset >= hold:  # read per record: set any time
                state.pause(part, offset)  # the cut: the rest of the partition is not this sink's
                return
            if part.retry_at is not None:
                state.pause(part, offset)
                return
            if not part.ledger_checked and not await check_ledger(state, part, offset):
                return
            if part.replay_end is not None and offset > part.replay_end:
                # The recorded batch ended in an offset gap: close it at its recorded bound.
                batch = part.batch
                part.replay_end = None
                if batch is not None:
                    if batch.bound is not None:
                        batch.last_offset = max(batch.last_offset, batch.bound)
                    if not await flush(state, part, offset):
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
            batch.rows.src_offset = offset
            await decode_into(state, batch, rec, part.marks)
            batch.note_record(offset, len(rec.value or b""))
            part.next_offset = offset + 1
            if batch.full(state.limits):
                nxt = records[i + 1].offset if i + 1 < len(records) else None
                if not await flush(state, part, nxt):
                    return
