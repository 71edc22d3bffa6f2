"""The Kafka publisher: a bounded in-memory buffer drained by a background thread.

Modelled on OpenTelemetry's ``BatchSpanProcessor`` and MLflow's async trace export queue:

* The application thread only appends to the bounded buffer (``_buffer.EventBuffer``) under a short
  lock (:meth:`KafkaPublisher.submit`): no network I/O, no encoding, no import, never raises. A full
  buffer drops and counts the new event (``buffer_policy="drop"``, the default) or makes the call wait
  for room, at most ``buffer_block_timeout`` seconds (``"block"``).
* :meth:`KafkaPublisher.start` (called by ``configure()``) imports aiokafka and asyncio in the calling
  thread and starts the publisher thread, so no traced call pays for that. Without ``configure()`` the
  first event starts the thread, which then does the imports itself.
* The daemon thread runs its own asyncio loop and an ``aiokafka.AIOKafkaProducer`` (``acks="all"``, not
  idempotent: Tansu does not support it). It takes up to ``_CHUNK`` events (after ``linger_ms``),
  encodes them, groups them by target partition (Kafka's default partitioner over the session id, else
  the trace id) into NDJSON envelopes of at most ``max_envelope_bytes`` and sends each with an explicit
  ``partition=``: a *round*. The next round starts once every envelope of this one is acknowledged or
  refused for good.
* Delivery that fails for a reason that can pass (broker down, timeouts, a leader moving) is retried:
  the round is kept, the producer rebuilt with exponential backoff, and the outage logged once on the
  ``tracehouse`` logger (recovery once more); aiokafka's per-attempt connection errors are kept off the
  application's logs (``_kafka_logs``). Only a refusal that cannot pass (a message too large...) and
  what is still unsent at shutdown count as ``failed``.
* Events finish in acceptance order, round after round, so the buffer's watermark tells :meth:`flush`
  when everything accepted before it has been acknowledged or given up on.
* Acknowledged envelopes stay in a bounded ring (``_replay.AckMemory``) and are re-sent once when the
  acknowledged offsets show that the broker was replaced by an empty one (counted in ``replayed``).
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401  (light; not importable once the interpreter exits: see _aioloop)
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ._buffer import EventBuffer
from ._config import TracehouseConfig
from ._kafka_logs import PublisherStatus
from ._publishers import PublisherStats
from ._record import TraceRecord

if TYPE_CHECKING:  # imported in the publisher thread (or by start()), never on a traced call
    import asyncio

    from ._heartbeat import Heartbeat
    from ._replay import AckMemory, Outgoing

_log = logging.getLogger("tracehouse")

_CHUNK: Final = 2048
"""Events encoded and sent per round; their acknowledgements are awaited before the next."""
_LINGER_BELOW: Final = 512
"""Linger only when fewer events than this are waiting (a backlog is sent at once)."""
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0
_CONNECT_TIMEOUT: Final = 10.0
_STOP_TIMEOUT: Final = 5.0
_ABANDON_CLOSE_TIMEOUT: Final = 1.0
_READY_TIMEOUT: Final = 5.0
_LAZY_START_DELAY: Final = 0.05


def warm_up() -> None:
    """Import what the publisher thread needs (asyncio, aiokafka, the encoder) in the calling thread and
    quiet aiokafka's loggers for the publisher threads. Never raises: the thread reports failures."""
    try:
        import asyncio  # noqa: F401

        import aiokafka
        import aiokafka.partitioner  # noqa: F401
        import orjson  # noqa: F401

        from . import _aioloop, _envelopes, _replay  # noqa: F401
        from ._kafka_logs import quiet_aiokafka

        quiet_aiokafka()
    except Exception:  # pragma: no cover - a broken installation; the publisher thread logs it
        _log.debug("tracehouse: warm-up imports failed", exc_info=True)


def _retriable(exc: BaseException) -> bool:
    """Whether a failed send may succeed later (broker down or restarting, timeouts, leadership)."""
    from aiokafka import errors

    if isinstance(exc, OSError | TimeoutError):
        return True
    # UnknownError (UNKNOWN_SERVER_ERROR): Tansu answers it when two produce requests race to write the
    # first batch of a fresh partition (its log: "AlreadyExists ... 00000000000000000000.batch"), as
    # happens when `up` starts a new broker generation and every client writes at once; the batch was
    # not written, and a retry succeeds.
    passing = (errors.KafkaTimeoutError, errors.KafkaConnectionError, errors.ProducerClosed,
               errors.RequestTimedOutError, errors.NodeNotReadyError, errors.UnknownError)  # fmt: skip
    if isinstance(exc, passing):
        return True
    return isinstance(exc, errors.KafkaError) and bool(getattr(exc, "retriable", False))


class _Round:
    """The envelopes of up to ``_CHUNK`` events, from encoding until each is acknowledged or refused."""

    __slots__ = ("failed", "items", "pending", "published", "replayed")

    def __init__(self, items: int, pending: list[Outgoing], failed: int) -> None:
        self.items = items  # events taken from the buffer (the watermark moves by this much at the end)
        self.pending = pending  # envelopes not yet acknowledged nor refused for good
        self.failed = failed  # events that could not be encoded or were refused for good
        self.published = 0
        self.replayed = 0


class KafkaPublisher:
    """Buffers events and publishes them to ``Topics(prefix).traces`` from a background thread."""

    def __init__(self, config: TracehouseConfig, on_start: Callable[[], None] | None = None) -> None:
        self._config = config
        self._topic = config.topics.traces
        self._linger = config.linger_ms / 1000.0
        self._on_start = on_start
        self._buffer = EventBuffer(config.buffer_size, config.buffer_policy == "block", config.buffer_block_timeout)
        self._ready = threading.Event()
        self._warmed_up = False  # start() did the imports
        self._thread: threading.Thread | None = None
        # -- owned by the publisher thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._backlog: deque[Any] = deque()  # taken from the buffer, not yet in a round
        self._status = PublisherStatus(config.kafka_bootstrap, self._buffer)
        self._heartbeat: Heartbeat | None = None

    # -- application side --------------------------------------------------------------------------

    def start(self, wait: float = _READY_TIMEOUT) -> None:
        """Start the publisher thread now, with its imports done in the calling thread, and wait (at most
        ``wait`` seconds) until its loop runs. ``configure()`` calls this so that no traced call pays the
        start-up. Connecting to Kafka happens in the thread, later. Never raises."""
        try:
            warm_up()
            if not self._buffer.claim_start():
                return
            self._warmed_up = True
            self._start_thread()
            self._ready.wait(wait)
        except Exception:  # pragma: no cover - thread limits...
            _log.warning("tracehouse: could not start the publisher thread", exc_info=True)

    def submit(self, item: dict[str, Any] | TraceRecord) -> None:
        """Take one event. O(1), no I/O, never raises; waits only under ``buffer_policy="block"``."""
        try:
            then = self._buffer.put(item)
            if then == "start":
                self._start_thread()
            elif then == "wake":
                loop = self._loop
                if loop is not None:
                    loop.call_soon_threadsafe(self._set_wake)
        except Exception:  # pragma: no cover - defensive: a closed loop, thread limits...
            _log.debug("tracehouse: submit failed", exc_info=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event accepted before this call is acknowledged by Kafka or given up on
        (see ``stats().failed``). ``False`` when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        target = self._buffer.flush_target()
        if target is None:
            return True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._set_wake)
        return self._buffer.wait_done(target, deadline)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush (up to ``timeout``), stop the thread and the Kafka producer. Idempotent.

        Events still unsent afterwards count as failed; events submitted afterwards are dropped.
        ``True`` if everything was flushed."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        flushed = self.flush(timeout)
        self._buffer.close()
        loop, thread = self._loop, self._thread
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._request_stop)
        if thread is not None and thread is not threading.current_thread():
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            thread.join(_STOP_TIMEOUT if remaining is None else max(remaining, _ABANDON_CLOSE_TIMEOUT + 0.5))
            if thread.is_alive():
                _log.warning("tracehouse: the publisher thread did not stop in time")
        if thread is None or not thread.is_alive():
            self._backlog.clear()
            self._buffer.abandon()
        return flushed

    def stats(self) -> PublisherStats:
        """The counters (consistent snapshot)."""
        return self._buffer.stats()

    @property
    def config(self) -> TracehouseConfig:
        return self._config

    # -- thread and loop ---------------------------------------------------------------------------

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._thread_main, name="tracehouse-publisher", daemon=True)
        self._thread = thread
        thread.start()
        if self._on_start is not None:
            self._on_start()

    def _thread_main(self) -> None:
        from ._kafka_logs import register_thread, unregister_thread

        ident = threading.get_ident()
        self._buffer.consumer_ident = ident
        register_thread(ident)
        try:
            if not self._warmed_up:
                # started by a traced call, not by start(): let that call return before the imports hold
                # the GIL for a while
                time.sleep(_LAZY_START_DELAY)
            from ._aioloop import run

            run(self._run)
        except BaseException:  # pragma: no cover - the loop itself broke
            _log.exception("tracehouse: the publisher thread crashed")
        finally:
            unregister_thread(ident)
            self._ready.set()
            self._loop = None
            self._backlog.clear()
            self._buffer.abandon()

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._set_wake()

    async def _run(self) -> None:
        import asyncio

        from ._replay import AckMemory

        warm_up()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._wake.set()  # events may have arrived before the loop could be woken
        self._loop = asyncio.get_running_loop()
        if self._buffer.closed:  # shut down before the loop could be told
            self._stop.set()
        self._ready.set()
        memory = AckMemory(self._config.replay_window, self._config.replay_max_bytes)
        if self._config.heartbeat_interval > 0:
            from ._heartbeat import Heartbeat

            self._heartbeat = Heartbeat(self._topic, self._config.heartbeat_interval, self._config.service_name,
                                        self.stats)  # fmt: skip
        producer: Any = None
        current: _Round | None = None
        backoff = _BACKOFF_MIN
        beats = asyncio.ensure_future(self._heartbeat.run(self._pause, self._stop, lambda: producer, self._partitions)
                                      if self._heartbeat is not None else asyncio.sleep(0))  # fmt: skip
        try:
            while True:
                self._status.note_drops()
                if producer is None:
                    if self._stop.is_set():
                        return
                    producer = await self._connect()
                    if producer is None:
                        await self._pause(backoff)
                        backoff = min(backoff * 2, _BACKOFF_MAX)
                        continue
                    if current is None and not self._waiting():
                        self._status.back_up()
                if current is None:
                    queued, urgent = self._buffer.waiting()
                    waiting = queued + len(self._backlog)
                    if not waiting:
                        if self._stop.is_set():
                            return
                        await self._wake.wait()
                        self._wake.clear()
                        continue
                    if self._linger > 0 and waiting < _LINGER_BELOW and not urgent and not self._stop.is_set():
                        await asyncio.sleep(self._linger)
                partitions = await self._partitions(producer)
                if partitions:
                    current = self._take(partitions) if current is None else self._repack(current, partitions)
                    outcome = await self._attempt(producer, current, memory)
                else:
                    outcome = "no partitions known for the topic"
                if outcome == "stopped":
                    return
                if outcome is not None:
                    self._status.went_down(outcome)
                    await self._close(producer)
                    producer = None
                    await self._pause(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                assert current is not None
                backoff = _BACKOFF_MIN
                self._status.back_up()
                self._buffer.finish(current.items, current.published, current.failed, current.replayed)
                current = None
        finally:
            beats.cancel()
            if current is not None:  # stopped with it unfinished: what is not done yet is counted as lost
                self._buffer.finish(current.published + current.failed, current.published, current.failed,
                                    current.replayed)  # fmt: skip
            if producer is not None:
                stopping = self._stop.is_set() and (current is not None or self._waiting())
                if self._heartbeat is not None:  # the final counts, drops at shutdown included
                    await self._heartbeat.send(producer, await self._partitions(producer), timeout_s=1.0)
                await self._close(producer, _ABANDON_CLOSE_TIMEOUT if stopping else _STOP_TIMEOUT)

    def _waiting(self) -> bool:
        return bool(self._buffer.waiting()[0] or self._backlog)

    async def _pause(self, seconds: float) -> None:
        import asyncio

        assert self._stop is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _until_stopped(self, work: Any, limit_s: float | None = None) -> tuple[bool, Any]:
        """Run ``work`` (a coroutine) until it finishes, a stop is requested or ``limit_s`` seconds pass:
        ``(finished, task)``."""
        import asyncio

        assert self._stop is not None
        task = asyncio.ensure_future(work)
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop_wait}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        if task.done():
            return True, task
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return False, task

    async def _connect(self) -> Any:
        """A started producer that knows the topic's partitions, or ``None`` (outage logged once)."""
        from aiokafka import AIOKafkaProducer

        from tracehouse.schemas.kafka import producer_compression

        from ._kafka_logs import quiet_aiokafka

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
        try:
            producer = AIOKafkaProducer(**options)
        except Exception as exc:  # bad kafka_options: retrying will not help, but never crash the thread
            self._status.went_down(f"cannot create the producer: {exc!r}")
            return None
        quiet_aiokafka()  # loggers aiokafka created since the warm-up
        finished, attempt = await self._until_stopped(self._start_producer(producer), _CONNECT_TIMEOUT)
        if finished and attempt.exception() is None:
            return producer
        error = attempt.exception() if finished else None
        await self._close(producer)
        if not (self._stop is not None and self._stop.is_set()):
            self._status.went_down(repr(error) if error is not None else f"no answer within {_CONNECT_TIMEOUT:.0f} s")
        return None

    async def _start_producer(self, producer: Any) -> None:
        await producer.start()
        await producer.partitions_for(self._topic)

    async def _close(self, producer: Any, limit_s: float = _STOP_TIMEOUT) -> None:
        import asyncio

        try:
            await asyncio.wait_for(producer.stop(), limit_s)
        except BaseException:
            _log.debug("tracehouse: error while stopping the Kafka producer", exc_info=True)

    async def _partitions(self, producer: Any) -> list[int] | None:
        import asyncio

        known = producer.client.cluster.partitions_for_topic(self._topic)
        if not known:
            try:
                known = await asyncio.wait_for(producer.partitions_for(self._topic), _CONNECT_TIMEOUT)
            except Exception:
                _log.debug("tracehouse: no partitions known for topic %s", self._topic, exc_info=True)
                return None
        return sorted(known)

    def _take(self, partitions: list[int]) -> _Round:
        """The next round: up to ``_CHUNK`` waiting events, encoded and packed."""
        from ._envelopes import build_batch, outgoing

        if not self._backlog:
            self._backlog = self._buffer.take_all()
        backlog = self._backlog
        items = [backlog.popleft() for _ in range(min(_CHUNK, len(backlog)))]
        batch = build_batch(items, partitions, self._config.max_envelope_bytes)
        return _Round(len(items), outgoing(batch, len(partitions)), batch.failed)

    def _repack(self, current: _Round, partitions: list[int]) -> _Round:
        from ._envelopes import repack

        current.pending = repack(current.pending, partitions, self._config.max_envelope_bytes)
        return current

    async def _attempt(self, producer: Any, current: _Round, memory: AckMemory) -> str | None:
        """Send what is pending in ``current`` until it is all acknowledged or refused for good (``None``),
        a failure that may pass (its description: the caller rebuilds the producer and tries again
        later), or a stop request (``"stopped"``). A replaced broker's replay joins the round."""
        while current.pending:
            finished, task = await self._until_stopped(self._send_all(producer, current.pending))
            if not finished:
                return "stopped"
            results: list[tuple[Outgoing, Any]] = task.result()
            acks: list[tuple[Outgoing, int]] = []
            retry: list[Outgoing] = []
            error: BaseException | None = None
            for out, result in results:
                if not isinstance(result, BaseException):
                    acks.append((out, result.offset))
                    if out.replay:
                        current.replayed += out.count
                    else:
                        current.published += out.count
                elif _retriable(result):
                    retry.append(out)
                    error = error or result
                else:
                    self._status.refused(out.count, result)
                    if not out.replay:
                        current.failed += out.count
            current.pending = retry
            replacement = memory.acknowledged(acks, time.monotonic())
            if replacement is not None:
                _log.warning(
                    "tracehouse: the Kafka broker at %s was replaced by an empty one (partition %d acknowledged "
                    "offset %d after %d); re-sending %d event(s) acknowledged in the last %g s",
                    self._config.kafka_bootstrap, replacement.partition, replacement.offset,
                    replacement.highest_before, replacement.events, self._config.replay_window,
                )  # fmt: skip
                current.pending.extend(replacement.resend)
            if error is not None:
                return f"delivery failed: {error!r}"
        return None

    async def _send_all(self, producer: Any, envelopes: list[Outgoing]) -> list[tuple[Outgoing, Any]]:
        """Send every envelope and wait for each outcome: its ``RecordMetadata`` or its exception."""
        import asyncio

        from tracehouse.schemas import envelope_headers

        futures: list[tuple[Outgoing, Any]] = []
        outcomes: list[tuple[Outgoing, Any]] = []
        passing: BaseException | None = None
        for out in envelopes:
            if passing is not None:  # each send would wait as long for the same reason: retry them all later
                outcomes.append((out, passing))
                continue
            try:
                future = await producer.send(
                    self._topic, out.value, key=out.key, partition=out.partition, headers=envelope_headers(out.count)
                )
            except Exception as exc:
                outcomes.append((out, exc))
                if _retriable(exc):
                    passing = exc
                continue
            futures.append((out, future))
        results = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
        outcomes.extend((out, result) for (out, _), result in zip(futures, results, strict=True))
        return outcomes
