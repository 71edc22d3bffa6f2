"""What the publisher remembers of acknowledged envelopes, to re-send them when the broker is replaced.

The embedded broker keeps everything in memory, so ``tracehouse up`` replaces it with an empty one (a
new *generation*: every partition starts again at offset 0) when it nears its memory limit, after
draining what it holds. An envelope acknowledged by the old broker in its last moments may never have
been consumed. :class:`AckMemory` keeps a bounded ring of recently acknowledged envelopes (a time window
and a byte cap) and the highest offset acknowledged on each partition. A round of acknowledgements
whose lowest offset on some partition is *not above* the highest seen there can only come from a new
log, since one log hands out strictly increasing offsets and the publisher sends a round only after the
previous one is acknowledged. Then the ring is handed back to be re-sent once, and the offset memory
starts again from this round.

Re-sending is safe: the sink stores a trace id once (first write wins) and tags and assessments are
versioned upserts, so a duplicate changes nothing downstream.

Limits: a generation change is seen only when this process publishes again after it, and only if the
new log has not already grown past the old one on every partition this process writes to (other
producers fill it too); envelopes older than the window or beyond the byte cap are not re-sent.

Pure bookkeeping, no I/O: used from the publisher's thread only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Outgoing:
    """One envelope to send (or re-send): NDJSON ``value`` of ``count`` events for ``partition``, packed
    for a topic of ``partition_count`` partitions. ``replay``: a re-send after a generation change."""

    partition: int
    key: bytes | None
    value: bytes
    count: int
    partition_count: int
    replay: bool = False


@dataclass(frozen=True, slots=True)
class Replacement:
    """A generation change, as seen in one round of acknowledgements."""

    #: The partition whose offsets went back, the highest offset acknowledged there before, and the
    #: lowest of this round.
    partition: int
    highest_before: int
    offset: int
    #: What to re-send: envelopes acknowledged by the old broker within the window (oldest first).
    resend: list[Outgoing]

    @property
    def events(self) -> int:
        return sum(o.count for o in self.resend)


class AckMemory:
    """A ring of envelopes acknowledged in the last ``window_s`` seconds (at most ``max_bytes`` of them),
    and the highest acknowledged offset per partition. ``window_s == 0`` or ``max_bytes == 0``: the
    ring stays empty (generation changes are still detected, nothing is re-sent)."""

    def __init__(self, window_s: float, max_bytes: int) -> None:
        self._window = window_s
        self._max_bytes = max_bytes
        self._ring: deque[tuple[float, Outgoing]] = deque()
        self._bytes = 0
        self._highest: dict[int, int] = {}

    @property
    def size(self) -> tuple[int, int]:
        """``(envelopes, bytes)`` held now."""
        return len(self._ring), self._bytes

    def acknowledged(self, acks: Sequence[tuple[Outgoing, int]], now: float) -> Replacement | None:
        """Record one round: each envelope with the offset Kafka acknowledged it at, all at time ``now``
        (monotonic seconds). Returns the envelopes to re-send if this round shows a new generation."""
        if not acks:
            return None
        lowest: dict[int, int] = {}
        highest: dict[int, int] = {}
        for out, offset in acks:
            p = out.partition
            lowest[p] = min(offset, lowest.get(p, offset))
            highest[p] = max(offset, highest.get(p, offset))
        replaced: tuple[int, int, int] | None = None
        for p, low in sorted(lowest.items()):
            before = self._highest.get(p)
            if before is not None and low <= before:
                replaced = (p, before, low)
                break
        if replaced is None:
            for p, high in highest.items():
                self._highest[p] = high
            for out, _ in acks:
                self._remember(out, now)
            self._expire(now)
            return None
        self._expire(now)
        resend = [out for _, out in self._ring]
        self._ring.clear()
        self._bytes = 0
        previous, self._highest = self._highest, {}
        for out, offset in acks:
            before = previous.get(out.partition)
            if before is None or offset > before:
                # may have been acknowledged by the old broker just before it went away: send it again,
                # and do not take its offset for the new broker's
                resend.append(out)
            else:
                self._highest[out.partition] = max(offset, self._highest.get(out.partition, offset))
                self._remember(out, now)
        for out in resend:
            out.replay = True
        partition, before, low = replaced
        return Replacement(partition, before, low, resend)

    def _remember(self, out: Outgoing, now: float) -> None:
        size = len(out.value)
        if self._window <= 0 or size > self._max_bytes:
            return
        self._ring.append((now, out))
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, old = self._ring.popleft()
            self._bytes -= len(old.value)

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        ring = self._ring
        while ring and ring[0][0] < horizon:
            _, old = ring.popleft()
            self._bytes -= len(old.value)
