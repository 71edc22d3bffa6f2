"""The SDK's bounded buffer of events, between the application's threads and the publisher thread.

The application side (:meth:`EventBuffer.put`) appends under a short lock: no I/O, no encoding. When
``capacity`` events are accepted and not yet finished (published or given up on), a new event is
dropped and counted (policy ``drop``), or the call waits for room for at most ``block_timeout`` seconds
(policy ``block``); after a wait that timed out, later calls drop at once until the publisher makes
progress again, so a broker that is down costs one wait, not one per call.

Events finish in acceptance order, so one watermark (``done``) tells :meth:`EventBuffer.wait_done` when
everything accepted before a point is finished: ``accepted == published + failed + buffered`` always.
Only the publisher thread takes events out (:meth:`take_all`) and finishes them (:meth:`finish`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Literal

from ._publishers import PublisherStats

_log = logging.getLogger("tracehouse")


class EventBuffer:
    """Counters and a queue behind one condition variable."""

    def __init__(self, capacity: int, block: bool = False, block_timeout: float = 0.0) -> None:
        self.capacity = capacity
        self._block = block
        self._block_timeout = block_timeout
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Any] = deque()
        self._seq = 0  # events accepted so far; event n has sequence number n
        self._done = 0  # events 1..done are published or failed
        self._published = 0
        self._failed = 0
        self._dropped = 0
        self._replayed = 0
        self._closed = False
        self._started = False  # a consumer (the publisher thread) was asked for
        self._wake_pending = False  # the consumer was told there are events since it last took them
        self._urgent = False  # a flush waits: do not linger
        self._block_expired = False  # a wait for room timed out: drop at once until there is progress
        self._reported = False
        #: The consumer's thread: it never waits for room (it is the one making room).
        self.consumer_ident: int | None = None

    # -- application side --------------------------------------------------------------------------

    def put(self, item: Any) -> Literal["dropped", "queued", "wake", "start"]:
        """Accept one event, or drop and count it. Then: ``"wake"`` the consumer (the first event since it
        last took them), or ``"start"`` it (the first event ever, and no consumer was started)."""
        with self._cond:
            if self._closed or (self._seq - self._done >= self.capacity and not self._wait_for_room()):
                self._dropped += 1
                return "dropped"
            self._seq += 1
            self._queue.append(item)
            if self._wake_pending:
                return "queued"
            self._wake_pending = True
            if self._started:
                return "wake"
            self._started = True
            return "start"

    def _wait_for_room(self) -> bool:
        """Under the lock, with the buffer full: wait for room if the policy says so. ``True``: there is
        room now (and the buffer is open)."""
        if not self._block or self._block_expired or threading.get_ident() == self.consumer_ident:
            return False
        deadline = time.monotonic() + self._block_timeout
        while self._seq - self._done >= self.capacity:
            remaining = deadline - time.monotonic()
            if self._closed or remaining <= 0:
                self._block_expired = not self._closed
                return False
            self._cond.wait(remaining)
        return not self._closed

    def claim_start(self) -> bool:
        """``True`` once: the caller starts the consumer now (``configure()``), not the first event."""
        with self._cond:
            if self._started or self._closed:
                return False
            self._started = True
            return True

    def flush_target(self) -> int | None:
        """The sequence number a flush waits for, or ``None`` when everything is finished already. Marks
        the buffer urgent (the consumer stops lingering)."""
        with self._cond:
            if self._done >= self._seq:
                return None
            self._urgent = True
            return self._seq

    def wait_done(self, target: int, deadline: float | None) -> bool:
        """Wait until events ``1..target`` are finished; ``False`` when ``deadline`` (monotonic) passed."""
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

    def close(self) -> None:
        """Refuse (drop) every later event; calls waiting for room drop theirs now."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> PublisherStats:
        with self._cond:
            return PublisherStats(
                accepted=self._seq,
                published=self._published,
                dropped=self._dropped,
                failed=self._failed,
                buffered=self._seq - self._done,
                replayed=self._replayed,
            )

    # -- publisher side ----------------------------------------------------------------------------

    def waiting(self) -> tuple[int, bool]:
        """How many events wait in the queue, and whether a flush is waiting for them."""
        with self._cond:
            return len(self._queue), self._urgent

    def take_all(self) -> deque[Any]:
        """Everything queued, in acceptance order (the next event wakes the consumer again)."""
        with self._cond:
            items, self._queue = self._queue, deque()
            self._wake_pending = False
            return items

    def finish(self, items: int, published: int, failed: int, replayed: int) -> None:
        """The next ``items`` events are finished: ``published`` acknowledged, ``failed`` given up on
        (``published + failed == items``, or less when the publisher stops with them unfinished, see
        :meth:`abandon`). ``replayed`` events were acknowledged again after a broker replacement."""
        with self._cond:
            self._published += published
            self._failed += failed
            self._replayed += replayed
            self._done += items
            if items:
                self._block_expired = False
            if self._done >= self._seq:
                self._urgent = False
            self._cond.notify_all()

    def dropped(self) -> int:
        with self._cond:
            return self._dropped

    def abandon(self) -> None:
        """The publisher is gone: count what is still unfinished as failed, drop every later event, and
        report once what was not published."""
        with self._cond:
            self._closed = True
            lost = self._seq - self._done
            refused = self._failed
            if lost > 0:
                self._failed += lost
                self._done = self._seq
                self._queue.clear()
            self._cond.notify_all()
            report = not self._reported and bool(self._failed or self._dropped)
            self._reported = self._reported or report
            total, dropped = self._failed + self._dropped, self._dropped
        if report:  # logged outside the lock: a slow log handler must not hold up traced calls
            parts = [f"{lost} still buffered"] if lost else []
            if refused:
                parts.append(f"{refused} refused by Kafka or not encodable")
            if dropped:
                parts.append(f"{dropped} dropped because the buffer was full")
            _log.warning("tracehouse: %d event(s) were not published before shutdown (%s)", total, ", ".join(parts))
