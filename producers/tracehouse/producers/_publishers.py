"""Where finished events go: the :class:`Publisher` protocol, its counters, and the two trivial publishers.

The Kafka publisher is in ``_publisher``. ``ExporterPublisher`` hands each event dict to a callable
synchronously (tests, debugging); ``NullPublisher`` discards everything (tracing disabled).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from ._config import Exporter
from ._events import materialize
from ._record import TraceRecord

_log = logging.getLogger("tracehouse")


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Event counters since the last ``configure()``.

    ``accepted``: taken into the buffer; ``published``: acknowledged by Kafka (or by the exporter);
    ``dropped``: refused because the buffer was full or the SDK shut down; ``failed``: accepted but
    given up on (encoding error, a delivery Kafka refused for good, still unsent at shutdown);
    ``buffered``: accepted and not yet published or failed (``accepted == published + failed + buffered``).
    ``replayed``: events acknowledged a second time, re-sent because the broker was replaced by an empty
    one soon after acknowledging them (not counted in ``published``).
    """

    accepted: int = 0
    published: int = 0
    dropped: int = 0
    failed: int = 0
    buffered: int = 0
    replayed: int = 0


class Publisher(Protocol):
    """What the runtime needs from a destination of events."""

    def start(self) -> None:
        """Get ready now, so that the first event pays no start-up (``configure()`` calls it)."""

    def submit(self, item: dict[str, Any] | TraceRecord) -> None:
        """Take one event; must be cheap and never raise, and never block unless the configuration asks
        for it (``buffer_policy="block"``, bounded by ``buffer_block_timeout``)."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event taken before the call is published or failed."""

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush, then stop. Later events are dropped."""

    def stats(self) -> PublisherStats:
        """The counters."""


class NullPublisher:
    """Discards events (tracing disabled)."""

    def start(self) -> None:
        return None

    def submit(self, item: dict[str, Any] | TraceRecord) -> None:
        return None

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> bool:
        return True

    def stats(self) -> PublisherStats:
        return PublisherStats()


class ExporterPublisher:
    """Calls ``exporter(event_dict)`` synchronously in the thread that finished the event.

    Exceptions from the exporter are logged and counted as ``failed``; they never reach the traced code.
    """

    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter
        self._lock = threading.Lock()
        self._accepted = self._published = self._dropped = self._failed = 0
        self._closed = False

    def start(self) -> None:
        return None

    def submit(self, item: dict[str, Any] | TraceRecord) -> None:
        if self._closed:
            with self._lock:
                self._dropped += 1
            return
        with self._lock:
            self._accepted += 1
        try:
            self._exporter(materialize(item))
        except Exception:
            _log.warning("tracehouse: the exporter raised; event lost", exc_info=True)
            with self._lock:
                self._failed += 1
            return
        with self._lock:
            self._published += 1

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> bool:
        self._closed = True
        return True

    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(self._accepted, self._published, self._dropped, self._failed, 0)
