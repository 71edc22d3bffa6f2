"""Create tracehouse's topics with an explicit partition count (idempotent).

The partition count bounds the parallelism of the processors and sink, and the SDK's partitioner
depends on it, so it is set once, up front, rather than left to broker auto-creation.
"""

from __future__ import annotations

from tracehouse.schemas import Topics

DEFAULT_PARTITIONS = 8
_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(bootstrap: str, topics: Topics, partitions: int = DEFAULT_PARTITIONS) -> list[str]:
    """Create the traces, sessions, rollups, DLQ and epoch topics if missing. Returns the names created now."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        wanted = {topics.traces: partitions, topics.dlq: partitions, topics.sessions: partitions,
                  topics.user_rollups: partitions, topics.epoch: 1}  # fmt: skip
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [NewTopic(t, num_partitions=wanted[t], replication_factor=1) for t in missing]
        )
        created = []
        for name, code, *_ in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"could not create topic {name}: Kafka error code {code}")
        return created
    finally:
        await admin.close()
