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
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tracehouse.schemas import Topics

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
    From a shell: ``python -m tracehouse.processors dlq --bootstrap HOST:PORT --topic-prefix P``.
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
                    letters.append(DeadLetter.from_headers(rec.value or b"", rec.key, rec.headers))
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
