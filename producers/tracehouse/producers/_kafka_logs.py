"""What the publisher logs: each outage, recovery, first drop and kind of refusal once
(:class:`PublisherStatus`), and none of aiokafka's own records from the publisher thread.

aiokafka logs an ERROR for every failed connection attempt (``Unable connect to "127.0.0.1:9092"``),
and the publisher retries with backoff while the broker is down: without this, an instrumented app
whose broker is down prints a stream of client errors on its stderr (Python's last-resort handler
shows them even when the app configured no logging). The publisher reports an outage itself, once, on
the ``tracehouse`` logger, and once more when Kafka is back.

A filter on each ``aiokafka*`` logger drops the records emitted in a publisher thread and nothing else:
an application that uses aiokafka itself keeps its logs. The dropped records are re-emitted at DEBUG on
``tracehouse.kafka`` (enable that logger to see them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._buffer import EventBuffer

_log = logging.getLogger("tracehouse")

_threads: set[int] = set()
_lock = threading.Lock()
_debug = logging.getLogger("tracehouse.kafka")


class _FromPublisherThreads(logging.Filter):
    """Drops the records of the publisher threads (logger filters see only their own logger's records,
    so one instance is attached to every ``aiokafka*`` logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread not in _threads:
            return True
        if _debug.isEnabledFor(logging.DEBUG):
            with contextlib.suppress(Exception):
                _debug.debug("%s %s: %s", record.name, record.levelname, record.getMessage())
        return False


_FILTER = _FromPublisherThreads()


def quiet_aiokafka() -> None:
    """Attach the filter to every ``aiokafka*`` logger that exists now (call after importing aiokafka's
    modules; calling it again catches loggers created since). Idempotent, cheap."""
    for name in list(logging.Logger.manager.loggerDict):
        if name == "aiokafka" or name.startswith("aiokafka."):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


def register_thread(ident: int) -> None:
    """Records logged in thread ``ident`` (a publisher thread) are from now on filtered."""
    with _lock:
        _threads.add(ident)


def unregister_thread(ident: int) -> None:
    with _lock:
        _threads.discard(ident)


def forget_threads() -> None:
    """In a forked child: the parent's publisher threads do not exist here (their ids may be reused)."""
    global _lock
    _lock = threading.Lock()
    _threads.clear()


class PublisherStatus:
    """The publisher thread's log lines about Kafka and the buffer, each once per occurrence (an outage
    and its recovery, the first drop, each kind of refusal), never from an application thread."""

    def __init__(self, bootstrap: str, buffer: EventBuffer) -> None:
        self._bootstrap = bootstrap
        self._buffer = buffer
        self._down_since: float | None = None
        self._dropped_when_up = 0  # the drop counter when Kafka was last known to be reachable
        self._drops_logged = False
        self._refusals_logged: set[str] = set()

    def went_down(self, reason: str) -> None:
        """A connection or a delivery failed in a way that may pass (logged at the start of an outage)."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        _log.warning(
            "tracehouse: Kafka at %s is unreachable (%s); buffering up to %d events and retrying in the "
            "background (this is logged once; recovery is logged too)",
            self._bootstrap, reason, self._buffer.capacity,
        )  # fmt: skip

    def back_up(self) -> None:
        """Kafka answers (logged at the end of an outage, with the events dropped meanwhile)."""
        total = self._buffer.dropped()
        dropped, self._dropped_when_up = total - self._dropped_when_up, total
        if self._down_since is None:
            return
        seconds = time.monotonic() - self._down_since
        self._down_since = None
        _log.warning(
            "tracehouse: Kafka at %s is reachable again after %.0f s; publishing resumed (%d event(s) waiting, "
            "%d dropped meanwhile because the buffer was full)",
            self._bootstrap, seconds, self._buffer.stats().buffered, dropped,
        )  # fmt: skip

    def note_drops(self) -> None:
        """The first event the buffer drops (logged once per publisher)."""
        if self._drops_logged or self._buffer.closed or not self._buffer.dropped():
            return
        self._drops_logged = True
        _log.warning(
            "tracehouse: the buffer is full (%d events); new events are dropped and counted "
            "(tracehouse.stats().dropped) until it drains (logged once)", self._buffer.capacity,
        )  # fmt: skip

    def refused(self, count: int, exc: BaseException) -> None:
        """Kafka refused an envelope for good (logged once per kind of error)."""
        kind = type(exc).__name__
        if kind in self._refusals_logged:
            return
        self._refusals_logged.add(kind)
        _log.warning(
            "tracehouse: Kafka refused %d event(s) for good (%r); such events are counted as failed "
            "(logged once per kind of error)", count, exc,
        )  # fmt: skip
