"""Replay dead letters: read the dead-letter topic as a consumer group and reinsert, drop, or reinsert
until the first letter that would be refused again.

A run reads each partition of the dead-letter topic from the replay group's committed offset up to the
end the topic had when the run started (letters the sink writes meanwhile wait for the next run), at
most ``max_letters`` letters, and handles each by the policy:

``reinsert``       republish the letter's original line to its origin topic and partition, as a
                   one-line NDJSON envelope keyed like the event (:func:`tracehouse.schemas.kafka.partition_key`)
``drop``           mark it handled without republishing
``stop-on-error``  reinsert, but first validate the line as the sink would (same validator, same size
                   limit) and stop at the first letter that would be refused again, reporting it

Idempotent by origin: the group's offsets are committed only after every envelope republished before
them was acknowledged (``acks=all``), so a second run starts after what the first handled; within a run,
a letter whose origin ``(topic, partition, offset, line)`` was handled already (the sink dead-letters at
least once) is skipped. If a run dies between an acknowledgement and its commit, the next run republishes
those lines again, and the sink stores them once: a trace is logged once (first write wins) and every
other row is keyed by its identity.

A letter that cannot be replayed (its value was truncated to fit the topic, or it names no origin) is
skipped and counted under ``reinsert``, and stops ``stop-on-error``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tracehouse.schemas import EventDecodeError, decode_event, encode_envelope, envelope_headers, split_envelope
from tracehouse.schemas.kafka import KAFKA_MAX_MESSAGE_BYTES, partition_for, partition_key

from ._dlq import DeadLetter
from ._validate import DEFAULT_MAX_EVENT_BYTES, Rejection, validate_line

log = logging.getLogger("tracehouse.dlq")

#: The consumer group whose committed offsets mark letters as handled.
DEFAULT_REPLAY_GROUP: Final = "tracehouse-dlq-replay"
#: Header of a republished envelope: ``topic/partition/offset/line`` of the record the line first came in.
HEADER_REPLAYED_FROM: Final = "th-replayed-from"


class ReplayPolicy(enum.StrEnum):
    """What a replay does with each letter."""

    REINSERT = "reinsert"
    DROP = "drop"
    STOP_ON_ERROR = "stop-on-error"


@dataclass(slots=True)
class ReplayReport:
    """What one replay run did."""

    policy: ReplayPolicy
    #: Letters read (up to the topic's end when the run started, or ``max_letters``).
    read: int = 0
    #: Letters republished to their origin topic (and acknowledged).
    reinserted: int = 0
    #: Letters marked handled without republishing (``drop``).
    dropped: int = 0
    #: Letters skipped because a letter of the same origin was handled earlier in the run.
    duplicates: int = 0
    #: Letters that cannot be replayed (truncated, no origin), skipped under ``reinsert``.
    unreplayable: list[tuple[DeadLetter, str]] = field(default_factory=list)
    #: ``stop-on-error``: the first letter that would be refused again, and why (not handled).
    stopped_at: DeadLetter | None = None
    stop_reason: str | None = None
    #: Next offset per dead-letter partition, committed for the replay group at the end of the run.
    committed: dict[int, int] = field(default_factory=dict)
    #: Letters left before the run's end offsets (after a stop, or beyond ``max_letters``).
    remaining: int = 0

    @property
    def handled(self) -> int:
        return self.reinserted + self.dropped + self.duplicates + len(self.unreplayable)


def replay_problem(letter: DeadLetter) -> str | None:
    """Why a letter cannot be republished as it came, or ``None``."""
    if letter.truncated_from is not None:
        return (
            f"only the first {len(letter.value)} of its {letter.truncated_from} bytes were kept in the "
            f"dead-letter topic"
        )
    if not letter.origin_topic or letter.origin_partition < 0 or letter.origin_offset < 0:
        return "it names no origin topic and partition"
    if not letter.value.strip():
        return "it is empty"
    return None


def letter_lines(letter: DeadLetter) -> list[bytes]:
    """The event lines a letter holds: its one line, or every line of a message dead-lettered whole."""
    if letter.whole_message:
        return list(split_envelope(letter.value))
    return [letter.value]


def replay_key(letter: DeadLetter, lines: Sequence[bytes]) -> bytes | None:
    """The Kafka key of a republished letter: its event's partition key when its one line decodes,
    else the key its envelope had."""
    if len(lines) == 1:
        try:
            return partition_key(decode_event(lines[0])).encode()
        except EventDecodeError:
            pass
    return letter.key


async def replay_dead_letters(
    bootstrap: str,
    dlq_topic: str,
    policy: ReplayPolicy | str,
    *,
    max_letters: int | None = None,
    group: str = DEFAULT_REPLAY_GROUP,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    compression: str | None = None,
    idle_timeout_s: float = 10.0,
    chunk: int = 500,
) -> ReplayReport:
    """Replay the letters of ``dlq_topic`` not yet handled by ``group`` (see the module docstring).

    ``max_event_bytes`` is the size limit ``stop-on-error`` validates with (the sink's). Stops when the
    topic's end as of the start is reached, or when nothing arrives for ``idle_timeout_s``. Raises the
    broker's error if a republished envelope is not acknowledged; nothing after the last acknowledged
    chunk is committed then, so running again is safe.
    """
    policy = ReplayPolicy(policy)
    report = ReplayReport(policy)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
        client_id="tracehouse-dlq-replay", max_poll_records=chunk,
    )  # fmt: skip
    producer: AIOKafkaProducer | None = None
    if policy is not ReplayPolicy.DROP:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5,
            max_request_size=KAFKA_MAX_MESSAGE_BYTES, compression_type=compression,
            client_id="tracehouse-dlq-replay",
        )  # fmt: skip
    await consumer.start()
    try:
        if producer is not None:
            await producer.start()
        if dlq_topic not in await consumer.topics():
            return report
        tps = [TopicPartition(dlq_topic, p) for p in sorted(consumer.partitions_for_topic(dlq_topic) or ())]
        if tps:
            consumer.assign(tps)  # no group join: positions start at the group's committed offsets
            await _Run(consumer, producer, report, tps, max_letters, max_event_bytes, idle_timeout_s).run()
        return report
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()


class _Run:
    """One replay run over the assigned dead-letter partitions."""

    def __init__(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer | None, report: ReplayReport,
        tps: list[TopicPartition], max_letters: int | None, max_event_bytes: int, idle_timeout_s: float,
    ) -> None:  # fmt: skip
        self.consumer, self.producer, self.report, self.tps = consumer, producer, report, tps
        self.max_letters, self.max_event_bytes, self.idle_timeout_s = max_letters, max_event_bytes, idle_timeout_s
        self.ends: dict[TopicPartition, int] = {}
        self.start: dict[TopicPartition, int] = {}
        self.next: dict[TopicPartition, int] = {}
        self.origins: set[tuple[str, int, int, int]] = set()
        self.partitions: dict[str, list[int]] = {}
        self.stopped = False

    async def run(self) -> None:
        consumer, report = self.consumer, self.report
        self.start = {tp: await consumer.position(tp) for tp in self.tps}  # the group's committed offsets
        idle_until = time.monotonic() + self.idle_timeout_s
        while not self.stopped:
            fetched = await consumer.getmany(timeout_ms=200)
            for tp in self.tps:
                if tp not in self.ends and (high := consumer.highwater(tp)) is not None:
                    self.ends[tp] = high  # the end as of this run's first fetch: later letters wait
            pending: list[asyncio.Future[Any]] = []
            for tp in self.tps:
                for rec in fetched.get(tp, ()):
                    if self.stopped or rec.offset >= self.ends.get(tp, rec.offset + 1):
                        break
                    if self.max_letters is not None and report.read >= self.max_letters:
                        self.stopped = True
                        break
                    idle_until = time.monotonic() + self.idle_timeout_s
                    report.read += 1
                    if not await self._handle(DeadLetter.from_record(rec), pending):
                        self.stopped = True
                        break
                    self.next[tp] = rec.offset + 1
            await self._commit(pending)
            if self.stopped or await self._at_end():
                break
            if time.monotonic() > idle_until:
                log.warning("dead-letter replay: nothing read for %.0fs; stopping early", self.idle_timeout_s)
                break
        report.remaining = await self._remaining()

    async def _handle(self, letter: DeadLetter, pending: list[asyncio.Future[Any]]) -> bool:
        """Handle one letter by the policy; ``False`` to stop here (the letter is not handled)."""
        report, policy = self.report, self.report.policy
        if letter.origin in self.origins:
            report.duplicates += 1
            return True
        if policy is ReplayPolicy.DROP:
            self.origins.add(letter.origin)
            report.dropped += 1
            return True
        problem = replay_problem(letter)
        lines = letter_lines(letter) if problem is None else []
        if problem is None and policy is ReplayPolicy.STOP_ON_ERROR:
            for line in lines:
                result = validate_line(line, self.max_event_bytes)
                if isinstance(result, Rejection):
                    problem = f"it would be refused again: {result.reason}"
                    break
        if problem is not None:
            if policy is ReplayPolicy.STOP_ON_ERROR:
                report.stopped_at, report.stop_reason = letter, problem
                return False
            self.origins.add(letter.origin)
            report.unreplayable.append((letter, problem))
            return True
        pending.append(await self._republish(letter, lines))
        self.origins.add(letter.origin)
        report.reinserted += 1
        return True

    async def _republish(self, letter: DeadLetter, lines: list[bytes]) -> asyncio.Future[Any]:
        producer = self.producer
        assert producer is not None
        topic = letter.origin_topic
        partitions = self.partitions.get(topic)
        if partitions is None:
            partitions = self.partitions[topic] = sorted(await producer.partitions_for(topic))
        key = replay_key(letter, lines)
        if letter.origin_partition in partitions:
            partition = letter.origin_partition  # where its envelope went, and its session's other turns
        elif key is not None:
            partition = partition_for(key, partitions)  # the topic shrank: where its key maps now
        else:
            partition = partitions[0]
        origin = f"{topic}/{letter.origin_partition}/{letter.origin_offset}/{letter.origin_line}".encode()
        headers = [*envelope_headers(len(lines)), (HEADER_REPLAYED_FROM, origin)]
        fut: asyncio.Future[Any] = await producer.send(
            topic, encode_envelope(lines), key=key, partition=partition, headers=headers
        )
        return fut

    async def _commit(self, pending: list[asyncio.Future[Any]]) -> None:
        """Wait for the broker to acknowledge what was republished, then commit past it."""
        if pending:
            await asyncio.gather(*pending)
        offsets = {tp: off for tp, off in self.next.items() if self.report.committed.get(tp.partition) != off}
        if offsets:
            await self.consumer.commit(offsets)
            for tp, off in offsets.items():
                self.report.committed[tp.partition] = off

    async def _at_end(self) -> bool:
        """Every partition was read up to its end (the position is past the last record returned)."""
        for tp in self.tps:
            end = self.ends.get(tp)
            if end is None or await self.consumer.position(tp) < end:
                return False
        return True

    async def _remaining(self) -> int:
        return sum(max(0, end - self.next.get(tp, self.start[tp])) for tp, end in self.ends.items())


async def handled_offsets(bootstrap: str, dlq_topic: str, group: str = DEFAULT_REPLAY_GROUP) -> dict[int, int]:
    """The replay group's committed offset per dead-letter partition: every letter below it was handled
    (read with OffsetFetch; nothing joins the group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        if dlq_topic not in await consumer.topics():
            return {}
        out: dict[int, int] = {}
        for p in sorted(consumer.partitions_for_topic(dlq_topic) or ()):
            offset = await consumer.committed(TopicPartition(dlq_topic, p))
            if offset is not None:
                out[p] = offset
        return out
    finally:
        await consumer.stop()
