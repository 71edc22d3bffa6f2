"""The broker epoch: which incarnation of the topics a processor is reading.

An offset names a record only within one incarnation of a topic. The embedded broker keeps everything
in memory: when it restarts (and when a cluster's topics are deleted and created again) offsets start
again at 0, while ClickHouse keeps the sink's ledger, its deduplication tokens and the rollup marks,
all keyed by offsets. So everything keyed by offsets is also keyed by the epoch.

The epoch is the first record of the one-partition topic ``<prefix>epoch.v1`` (:attr:`Topics.epoch`):
a random id. The first process to find the topic empty writes one, and every process then reads the
same first record, so concurrent starters agree; a broker that lost its data has an empty topic, so
the next reader starts a new epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

log = logging.getLogger("tracehouse.epoch")

_TOPIC_ALREADY_EXISTS: Final = 36


def epoch_scope(group: str, epoch: str) -> str:
    """What a consumer group's offset-keyed records (ledger rows, tokens, marks) are keyed by in ``epoch``."""
    return f"{group}@{epoch}" if epoch else group


class EpochUnavailable(RuntimeError):
    """The epoch topic could not be read in time."""


async def _ensure_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic in set(await admin.list_topics()):
            return
        response = await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        for name, code, *_ in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise EpochUnavailable(f"could not create the epoch topic {name}: Kafka error code {code}")
    finally:
        await admin.close()


async def _first_record(bootstrap: str, topic: str, timeout_s: float) -> str | None:
    """The value of the topic's first record, or ``None`` when the topic is empty."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")  # fmt: skip
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        if end <= 0:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            for record in batch.get(tp, ()):
                return bytes(record.value or b"").decode()
        raise EpochUnavailable(f"the epoch topic {topic} reports records but none arrived in {timeout_s:.0f}s")
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


#: The longest a whole epoch read may take: every Kafka call in it is bounded, so a broker that stops
#: answering (seen under heavy load) fails the read, which its callers retry, instead of hanging the
#: sink's loop or the sessionizer's flush timer.
READ_DEADLINE_S: Final = 60.0


async def read_epoch(bootstrap: str, topic: str, *, create: bool = True, timeout_s: float = 15.0) -> str | None:
    """The current epoch id; with ``create``, start one if the topic is empty (or missing). Raises
    :class:`EpochUnavailable` past :data:`READ_DEADLINE_S`."""
    try:
        async with asyncio.timeout(READ_DEADLINE_S):
            return await _read_epoch(bootstrap, topic, create=create, timeout_s=timeout_s)
    except TimeoutError:
        raise EpochUnavailable(f"the epoch topic {topic} did not answer in {READ_DEADLINE_S:.0f}s") from None


async def _read_epoch(bootstrap: str, topic: str, *, create: bool, timeout_s: float) -> str | None:
    await _ensure_topic(bootstrap, topic)
    found = await _first_record(bootstrap, topic, timeout_s)
    if found is not None or not create:
        return found
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, uuid.uuid4().hex.encode(), partition=0)
    finally:
        await producer.stop()
    found = await _first_record(bootstrap, topic, timeout_s)  # another starter may have written first
    if found is None:
        raise EpochUnavailable(f"the epoch written to {topic} cannot be read back")
    log.info("new broker epoch %s (topic %s was empty)", found, topic)
    return found
