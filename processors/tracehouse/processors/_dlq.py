"""Dead letters: a line (or a whole message) the sink refused, with the reason and its origin.

The value is the raw bytes as they arrived, so a fixed processor can replay it. Headers:

``th-dlq-reason``        what was wrong (``str`` of the rejection)
``th-origin-topic``      topic of the envelope the bytes came from
``th-origin-partition``  its partition
``th-origin-offset``     its offset
``th-origin-line``       the 0-based index of the line inside the envelope; ``-1`` = the whole message
``th-dlq-time``          when it was dead-lettered, Unix milliseconds
``th-dlq-truncated``     only on a letter too large for the broker: its original size (the value
                         then holds its first 64 KiB)

The key is the envelope's key, so a replay lands on the same partition as the original.
Dead-lettering is at least once: after a crash the same letter may be sent again;
(origin topic, partition, offset, line) identifies it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tracehouse.schemas import Topics
from tracehouse.schemas.errors import DeadLetterLimitExceeded

log = logging.getLogger("tracehouse.sink")

HEADER_REASON: Final = "th-dlq-reason"
HEADER_ORIGIN_TOPIC: Final = "th-origin-topic"
HEADER_ORIGIN_PARTITION: Final = "th-origin-partition"
HEADER_ORIGIN_OFFSET: Final = "th-origin-offset"
HEADER_ORIGIN_LINE: Final = "th-origin-line"
HEADER_TIME: Final = "th-dlq-time"
#: Set (to the original size) when a letter was too large for the broker and only its head was kept.
HEADER_TRUNCATED: Final = "th-dlq-truncated"
_TRUNCATED_SIZE: Final = 64 * 1024
_HEADROOM: Final = 4096
#: ``th-origin-line`` of a message dead-lettered as a whole.
WHOLE_MESSAGE: Final = -1
_MAX_REASON: Final = 2000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused line or message, as sent to (and read back from) the DLQ topic."""

    value: bytes
    reason: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    origin_line: int
    time_ms: int
    key: bytes | None = None
    #: Original size of a letter that was too large to send whole (``value`` is then its head).
    truncated_from: int | None = None
    #: Where the letter itself is in the dead-letter topic (set when it was read from there).
    dlq_partition: int | None = None
    dlq_offset: int | None = None

    @property
    def whole_message(self) -> bool:
        return self.origin_line == WHOLE_MESSAGE

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (HEADER_REASON, self.reason[:_MAX_REASON].encode("utf-8", "replace")),
            (HEADER_ORIGIN_TOPIC, self.origin_topic.encode()),
            (HEADER_ORIGIN_PARTITION, str(self.origin_partition).encode()),
            (HEADER_ORIGIN_OFFSET, str(self.origin_offset).encode()),
            (HEADER_ORIGIN_LINE, str(self.origin_line).encode()),
            (HEADER_TIME, str(self.time_ms).encode()),
        ]

    @property
    def origin(self) -> tuple[str, int, int, int]:
        """``(topic, partition, offset, line)`` of what was refused: the identity of a letter (it may
        be dead-lettered more than once)."""
        return (self.origin_topic, self.origin_partition, self.origin_offset, self.origin_line)

    @classmethod
    def from_record(cls, rec: Any) -> DeadLetter:
        """A letter from a consumed DLQ record, with its position in the dead-letter topic."""
        letter = cls.from_headers(rec.value or b"", rec.key, rec.headers)
        return replace(letter, dlq_partition=rec.partition, dlq_offset=rec.offset)

    @classmethod
    def from_headers(cls, value: bytes, key: bytes | None, headers: Iterable[tuple[str, bytes]]) -> DeadLetter:
        """Rebuild a letter from a consumed DLQ record (missing headers read as empty / -1)."""
        h = {k: v for k, v in headers}

        def num(name: str) -> int:
            raw = h.get(name)
            try:
                return int(raw) if raw is not None else -1
            except ValueError:
                return -1

        return cls(
            value=value,
            reason=h.get(HEADER_REASON, b"").decode("utf-8", "replace"),
            origin_topic=h.get(HEADER_ORIGIN_TOPIC, b"").decode("utf-8", "replace"),
            origin_partition=num(HEADER_ORIGIN_PARTITION),
            origin_offset=num(HEADER_ORIGIN_OFFSET),
            origin_line=num(HEADER_ORIGIN_LINE),
            time_ms=num(HEADER_TIME),
            key=key,
            truncated_from=num(HEADER_TRUNCATED) if HEADER_TRUNCATED in h else None,
        )


@dataclass(slots=True, eq=False)
class PendingLetter:
    """A letter handed to the producer; ``future`` resolves when the broker acknowledged it."""

    letter: DeadLetter
    future: asyncio.Future[Any] | None = None


class DeadLetterWarnings:
    """Counts dead letters and logs one warning per ``interval_s`` at most, with the counts."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._lines = 0
        self._messages = 0
        self._last_reason = ""
        self._last_log = -float("inf")
        self._since = time.monotonic()

    def note(self, letter: DeadLetter) -> None:
        if letter.whole_message:
            self._messages += 1
        else:
            self._lines += 1
        self._last_reason = letter.reason
        now = time.monotonic()
        if now - self._last_log >= self._interval:
            self.emit(now)

    def maybe_emit(self) -> None:
        """Log what was counted if the interval has passed (so a burst that stopped is reported)."""
        now = time.monotonic()
        if now - self._last_log >= self._interval:
            self.emit(now)

    def emit(self, now: float | None = None) -> None:
        if not (self._lines or self._messages):
            return
        now = time.monotonic() if now is None else now
        log.warning(
            "dead-lettered %d lines and %d whole messages in the last %.0fs; last reason: %s",
            self._lines, self._messages, now - self._since, self._last_reason[:300],
        )  # fmt: skip
        self._lines = self._messages = 0
        self._last_log = self._since = now


class RefusalLimit:
    """Counts refused lines to stop a sink fed a stream it cannot read (a producer writing another
    format, or a schema version the sink does not know) instead of dead-lettering all of it.

    It trips after ``max_consecutive`` refused lines in a row (``0``: never), or when more than
    ``max_ratio`` of the last ``window`` lines were refused (checked once ``window`` lines were seen;
    ``1``: never). Lines are counted in the order they are read, good ones in runs: a run of good lines
    costs O(1) while the window holds no refusal. Pure bookkeeping: no I/O, no clock.
    """

    def __init__(self, max_consecutive: int, max_ratio: float, window: int) -> None:
        self.max_consecutive = max_consecutive
        self.max_ratio = max_ratio
        self.window = max(1, window)
        self._ring = bytearray(self.window)  # 1 = refused, per line, oldest overwritten
        self._at = 0
        self._seen = 0
        self._refused = 0  # refusals inside the window
        self.consecutive = 0
        self.last_reason = ""

    @property
    def refused_in_window(self) -> int:
        return self._refused

    @property
    def lines_in_window(self) -> int:
        return min(self._seen, self.window)

    def good(self, n: int = 1) -> None:
        """``n`` lines in a row were taken."""
        if n <= 0:
            return
        self.consecutive = 0
        self._seen += n
        if self._refused == 0:  # the window holds only zeros: advancing is enough
            self._at = (self._at + n) % self.window
            return
        ring, size, at = self._ring, self.window, self._at
        for _ in range(min(n, size)):
            self._refused -= ring[at]
            ring[at] = 0
            at = (at + 1) % size
        self._at = (self._at + n) % size

    def refused(self, reason: str) -> str | None:
        """One line was refused; returns why the limit tripped, or ``None``."""
        self.consecutive += 1
        self.last_reason = reason
        self._seen += 1
        at = self._at
        self._refused += 1 - self._ring[at]
        self._ring[at] = 1
        self._at = (at + 1) % self.window
        if self.max_consecutive > 0 and self.consecutive >= self.max_consecutive:
            return (
                f"{self.consecutive} lines in a row were refused "
                f"(TRACEHOUSE_SINK_MAX_CONSECUTIVE_REFUSED={self.max_consecutive})"
            )
        if self.max_ratio < 1.0 and self._seen >= self.window and self._refused > self.max_ratio * self.window:
            return (
                f"{self._refused} of the last {self.window} lines were refused, more than "
                f"{self.max_ratio:.0%} (TRACEHOUSE_SINK_MAX_REFUSED_RATIO={self.max_ratio}, "
                f"TRACEHOUSE_SINK_REFUSED_WINDOW={self.window})"
            )
        return None


def limit_exceeded(why: str, letter: DeadLetter, dlq_topic: str, committed: str) -> DeadLetterLimitExceeded:
    """The error a sink stops with when its :class:`RefusalLimit` trips: what, why, how to proceed."""
    return DeadLetterLimitExceeded(
        f"the sink stopped: {why}. Last refused: {letter.origin_topic}[{letter.origin_partition}] offset "
        f"{letter.origin_offset} line {letter.origin_line}: {letter.reason[:300]}. "
        f"Nothing past the last commit ({committed}) was committed in this run, so the records it refused "
        f"since then are read again at the next start; lines dead-lettered in batches committed earlier are "
        f"in {dlq_topic}. To proceed: look at the refused lines (`tracehouse dlq list`), fix their producer "
        f"(or the sink's settings) and start the sink again, then `tracehouse dlq replay --policy "
        f"stop-on-error` what was dead-lettered; if these lines are expected, raise the limit."
    )


class DeadLetterProducer:
    """Sends dead letters with a plain (not idempotent) producer and confirms them before a commit.

    It must not block the consumer loop on the broker's acknowledgement: ``send`` only enqueues;
    ``confirm`` is awaited by the flush of the batch that covers the letters' offsets.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        acks: str | int = "all",
        client_id: str = "",
        max_request_size: int = 1024 * 1024,
        compression: str | None = None,
    ) -> None:
        self.topic = topic
        self._max_request_size = max_request_size
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks=acks,
            enable_idempotence=False,
            linger_ms=5,
            max_request_size=max_request_size,
            client_id=client_id or "tracehouse-sink-dlq",
            compression_type=compression,
        )
        self._started = False

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._producer.stop()

    async def send(self, letter: DeadLetter) -> PendingLetter:
        """Enqueue a letter. A failure to enqueue is not raised: ``confirm`` sends it again."""
        pending = PendingLetter(letter)
        try:
            pending.future = await self._send(letter)
        except Exception as exc:  # broker down, buffer full, ...: retried by confirm()
            log.debug("dead letter not enqueued yet (%r); it will be retried before the commit", exc)
        return pending

    async def confirm(self, pending: Sequence[PendingLetter]) -> None:
        """Wait until every letter is acknowledged, re-sending those that failed once.

        Raises the broker's error if a letter still cannot be delivered (the caller must then not
        commit the offsets that letter came from).
        """
        for p in pending:
            fut = p.future
            if fut is not None:
                try:
                    await fut
                    continue
                except Exception as exc:
                    log.debug("dead letter delivery failed (%r); re-sending", exc)
            p.future = None
            p.future = await self._send(p.letter)
            await p.future

    async def _send(self, letter: DeadLetter) -> asyncio.Future[Any]:
        headers = letter.headers()
        value = letter.value
        if len(value) + _HEADROOM > self._max_request_size:
            # A letter the broker would refuse must not block the partition forever: keep its head.
            headers.append((HEADER_TRUNCATED, str(len(value)).encode()))
            value = value[:_TRUNCATED_SIZE]
        fut: asyncio.Future[Any] = await self._producer.send(self.topic, value, key=letter.key, headers=headers)
        return fut


async def read_dlq(
    bootstrap: str,
    topics: Topics | str,
    *,
    limit: int | None = None,
    timeout_s: float = 10.0,
) -> list[DeadLetter]:
    """Read the dead-letter topic from the beginning up to its current end (no consumer group).

    ``topics`` is a :class:`Topics` (its ``.dlq``) or a topic name. Stops at the high watermark of
    every partition, after ``limit`` letters, or after ``timeout_s``. An absent topic reads as empty.
    From a shell: ``tracehouse dlq list --bootstrap HOST:PORT --topic-prefix P``.
    """
    topic = topics.dlq if isinstance(topics, Topics) else topics
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        if topic not in await consumer.topics():
            return letters
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return letters
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp in tps:
                for rec in batch.get(tp, ()):
                    letters.append(DeadLetter.from_record(rec))
                    if limit is not None and len(letters) >= limit:
                        return letters
            done = True
            for tp in tps:
                high = consumer.highwater(tp)
                if high is None or await consumer.position(tp) < high:
                    done = False
                    break
            if done:
                break
        return letters
    finally:
        await consumer.stop()
