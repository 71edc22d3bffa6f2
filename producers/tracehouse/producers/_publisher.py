"""The Kafka publisher: a bounded in-memory buffer drained by a background thread.

Modelled on OpenTelemetry's ``BatchSpanProcessor`` and MLflow's async trace export queue:

* The application thread only appends to a deque under a short lock (:meth:`KafkaPublisher.submit`):
  no network I/O, no encoding, never blocks, never raises. When ``buffer_size`` events are pending
  the new one is dropped and counted.
* A daemon thread, started on the first event, runs its own asyncio loop and an
  ``aiokafka.AIOKafkaProducer`` (``acks="all"``, not idempotent: Tansu does not support it). After
  ``linger_ms`` it swaps the deque out, builds and encodes the events, groups them by target
  partition (Kafka's default partitioner over the session id, else the trace id) into NDJSON
  envelopes of at most ``max_envelope_bytes``, and sends each with an explicit ``partition=``.
* Events complete in acceptance order, so a single watermark (``done``) tells :meth:`flush` when
  everything accepted before it has been acknowledged or given up on.
* An unreachable broker is retried with exponential backoff while the buffer keeps filling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from tracehouse.schemas.kafka import producer_compression

from ._config import TracehouseConfig
from ._envelopes import build_batch
from ._publishers import PublisherStats
from ._record import TraceRecord

_log = logging.getLogger("tracehouse")

_CHUNK: Final = 2048
"""Events encoded and sent per round; their acknowledgements are awaited before the next."""
_LINGER_BELOW: Final = 512
"""Linger only when fewer events than this are waiting (a backlog is sent at once)."""
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0
_CONNECT_TIMEOUT: Final = 10.0
_STOP_TIMEOUT: Final = 5.0


class KafkaPublisher:
    """Buffers events and publishes them to ``Topics(prefix).traces`` from a background thread."""

    def __init__(self, config: TracehouseConfig, on_start: Callable[[], None] | None = None) -> None:
        self._config = config
        self._topic = config.topics.traces
        self._capacity = config.buffer_size
        self._linger = config.linger_ms / 1000.0
        self._on_start = on_start
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Any] = deque()
        self._seq = 0  # events accepted so far; event n has sequence number n
        self._done = 0  # events 1..done are published or failed
        self._published = 0
        self._failed = 0
        self._dropped = 0
        self._started = False
        self._closed = False
        self._wake_pending = False
        self._urgent = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._connected = False
        self._warned_down = False

    # -- application side --------------------------------------------------------------------------

    def submit(self, item: dict[str, Any] | TraceRecord) -> None:
        """Take one event. O(1), never blocks on I/O, never raises."""
        try:
            with self._cond:
                if self._closed or self._seq - self._done >= self._capacity:
                    self._dropped += 1
                    return
                self._seq += 1
                self._queue.append(item)
                if self._wake_pending:
                    return
                self._wake_pending = True
                start = not self._started
                self._started = True
                loop = self._loop
            if start:
                self._start_thread()
            elif loop is not None:
                loop.call_soon_threadsafe(self._set_wake)
        except Exception:  # pragma: no cover - defensive: a closed loop, thread limits...
            _log.debug("tracehouse: submit failed", exc_info=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event accepted before this call is acknowledged by Kafka or given up on
        (see ``stats().failed``). ``False`` when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._cond:
            target = self._seq
            if self._done >= target:
                return True
            self._urgent = True
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._set_wake)
        with self._cond:
            while self._done < target:
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush (up to ``timeout``), stop the thread and the Kafka producer. Idempotent.

        Events still unsent afterwards count as failed; events submitted afterwards are dropped.
        ``True`` if everything was flushed."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        flushed = self.flush(timeout)
        with self._cond:
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._request_stop)
        if thread is not None and thread is not threading.current_thread():
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            thread.join(_STOP_TIMEOUT if remaining is None else max(remaining, 0.5))
            if thread.is_alive():
                _log.warning("tracehouse: the publisher thread did not stop in time")
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._abandon_locked()
        return flushed

    def stats(self) -> PublisherStats:
        """The counters (consistent snapshot)."""
        with self._cond:
            return PublisherStats(
                accepted=self._seq,
                published=self._published,
                dropped=self._dropped,
                failed=self._failed,
                buffered=self._seq - self._done,
            )

    @property
    def config(self) -> TracehouseConfig:
        return self._config

    # -- thread and loop ---------------------------------------------------------------------------

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._thread_main, name="tracehouse-publisher", daemon=True)
        with self._cond:
            self._thread = thread
        thread.start()
        if self._on_start is not None:
            self._on_start()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException:  # pragma: no cover - the loop itself broke
            _log.exception("tracehouse: the publisher thread crashed")
        finally:
            with self._cond:
                self._loop = None
                self._closed = True
                self._abandon_locked()

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._set_wake()

    async def _run(self) -> None:
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        with self._cond:
            self._loop = asyncio.get_running_loop()
            if self._queue:
                self._wake.set()
            if self._closed:
                self._stop.set()
        producer: Any = None
        backoff = _BACKOFF_MIN
        try:
            while True:
                if producer is None:
                    producer = await self._connect()
                    if producer is None:
                        if self._stop.is_set():
                            return
                        await self._pause(backoff)
                        backoff = min(backoff * 2, _BACKOFF_MAX)
                        continue
                    backoff = _BACKOFF_MIN
                with self._cond:
                    waiting = len(self._queue)
                    urgent = self._urgent
                if not waiting:
                    if self._stop.is_set():
                        return
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                if self._linger > 0 and waiting < _LINGER_BELOW and not urgent and not self._stop.is_set():
                    await asyncio.sleep(self._linger)
                if not await self._drain(producer):
                    await self._close(producer)
                    producer = None
        finally:
            if producer is not None:
                await self._close(producer)

    async def _pause(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _connect(self) -> Any:
        """A started producer that knows the topic's partitions, or ``None`` (logged) on failure."""
        from aiokafka import AIOKafkaProducer

        cfg = self._config
        options: dict[str, Any] = {
            "bootstrap_servers": cfg.kafka_bootstrap,
            "client_id": "tracehouse-sdk",
            "acks": "all",
            "enable_idempotence": False,
            "linger_ms": 0,
            "max_batch_size": cfg.max_envelope_bytes + 65_536,
            "max_request_size": max(2 * cfg.max_envelope_bytes, 1_048_576),
            "request_timeout_ms": 30_000,
            "compression_type": producer_compression(cfg.compression),
        }
        options.update(cfg.kafka_options)
        producer = AIOKafkaProducer(**options)
        assert self._stop is not None
        stop_wait = asyncio.ensure_future(self._stop.wait())
        attempt = asyncio.ensure_future(self._start_producer(producer))
        try:
            await asyncio.wait(
                {stop_wait, attempt}, timeout=_CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop_wait.cancel()
        if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
            if not self._connected and self._warned_down:
                _log.warning("tracehouse: connected to Kafka at %s", cfg.kafka_bootstrap)
            self._connected = True
            self._warned_down = False
            return producer
        error = None if not attempt.done() or attempt.cancelled() else attempt.exception()
        attempt.cancel()
        with contextlib.suppress(BaseException):
            await attempt
        await self._close(producer)
        self._connected = False
        if not self._warned_down and not self._stop.is_set():
            self._warned_down = True
            _log.warning(
                "tracehouse: Kafka at %s is unreachable (%s); buffering up to %d events and retrying",
                cfg.kafka_bootstrap,
                error or "timed out",
                self._capacity,
            )
        return None

    async def _start_producer(self, producer: Any) -> None:
        await producer.start()
        await producer.partitions_for(self._topic)

    async def _close(self, producer: Any) -> None:
        try:
            await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT)
        except BaseException:
            _log.debug("tracehouse: error while stopping the Kafka producer", exc_info=True)

    async def _partitions(self, producer: Any) -> list[int] | None:
        known = producer.client.cluster.partitions_for_topic(self._topic)
        if not known:
            try:
                known = await asyncio.wait_for(producer.partitions_for(self._topic), _CONNECT_TIMEOUT)
            except Exception:
                _log.warning("tracehouse: no partitions known for topic %s", self._topic, exc_info=True)
                return None
        return sorted(known)

    async def _drain(self, producer: Any) -> bool:
        """Publish everything queued now. ``False`` when the producer must be rebuilt."""
        partitions = await self._partitions(producer)
        if not partitions:
            return False
        with self._cond:
            items, self._queue = self._queue, deque()
            self._wake_pending = False
            if not items:
                self._urgent = False
        while items:
            chunk = [items.popleft() for _ in range(min(_CHUNK, len(items)))]
            published, failed = await self._send_chunk(producer, chunk, partitions)
            with self._cond:
                self._published += published
                self._failed += failed
                self._done += len(chunk)
                if self._done >= self._seq:
                    self._urgent = False
                self._cond.notify_all()
        return True

    async def _send_chunk(self, producer: Any, chunk: list[Any], partitions: list[int]) -> tuple[int, int]:
        batch = build_batch(chunk, partitions, self._config.max_envelope_bytes)
        failed = batch.failed
        pending: list[tuple[asyncio.Future[Any], int]] = []
        for env in batch.envelopes:
            try:
                future = await producer.send(
                    self._topic,
                    env.value,
                    key=env.key,
                    partition=env.partition,
                    headers=env.headers(),
                )
            except Exception as exc:
                failed += env.count
                _log.warning("tracehouse: could not send %d event(s): %r", env.count, exc)
                continue
            pending.append((future, env.count))
        published = 0
        results = await asyncio.gather(*(f for f, _ in pending), return_exceptions=True)
        for (_, count), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                failed += count
                _log.warning("tracehouse: Kafka did not acknowledge %d event(s): %r", count, result)
            else:
                published += count
        return published, failed

    def _abandon_locked(self) -> None:
        """Count whatever is still queued or in flight as failed (the publisher is gone)."""
        lost = self._seq - self._done
        if lost > 0:
            self._failed += lost
            self._done = self._seq
            self._queue.clear()
            _log.warning("tracehouse: %d event(s) were not published before shutdown", lost)
        self._cond.notify_all()
