"""Group encoded events into NDJSON envelopes, one per Kafka partition, as Kafka's default partitioner would.

The partition of a key is Kafka's: ``murmur2(key) & 0x7fffffff % partitions`` (``aiokafka`` /
Java client ``DefaultPartitioner``), so every event of one session lands on one partition and any
other Kafka client keyed the same way agrees with the SDK.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ._events import materialize, partition_key

_log = logging.getLogger("tracehouse")
_HASH_CACHE_MAX: Final = 50_000
_hash_cache: dict[bytes, int] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``aiokafka.partitioner.murmur2``, the Java client's ``Utils.murmur2``)."""
    from aiokafka.partitioner import murmur2 as kafka_murmur2  # imported on first use only

    value: int = kafka_murmur2(data)
    return value


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among the sorted ``partitions``."""
    h = _hash_cache.get(key)
    if h is None:
        if len(_hash_cache) >= _HASH_CACHE_MAX:
            _hash_cache.clear()
        h = _hash_cache[key] = murmur2(key) & 0x7FFFFFFF
    return partitions[h % len(partitions)]


@dataclass(slots=True)
class Envelope:
    """One Kafka message: NDJSON ``lines`` bound for ``partition``, keyed by the first event's key."""

    partition: int
    key: bytes
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    @property
    def count(self) -> int:
        return len(self.lines)

    @property
    def value(self) -> bytes:
        return b"\n".join(self.lines)


@dataclass(slots=True)
class Batch:
    """The envelopes of one drain, and how many items could not be encoded."""

    envelopes: list[Envelope]
    failed: int = 0


def encode_item(item: Any) -> tuple[bytes, bytes] | None:
    """``(line, key)`` of a queued item, or ``None`` (logged) when it cannot be built or encoded."""
    try:
        event = materialize(item)
        return orjson.dumps(event), partition_key(event).encode()
    except Exception:
        _log.warning("tracehouse: dropping an event that could not be encoded", exc_info=True)
        return None


def build_batch(items: Iterable[Any], partitions: Sequence[int], max_bytes: int) -> Batch:
    """Encode ``items`` and pack them into envelopes of at most ``max_bytes`` (an event larger than
    that travels alone), one open envelope per partition, in arrival order."""
    open_by_partition: dict[int, Envelope] = {}
    envelopes: list[Envelope] = []
    failed = 0
    for item in items:
        encoded = encode_item(item)
        if encoded is None:
            failed += 1
            continue
        line, key = encoded
        partition = partition_for(key, partitions)
        env = open_by_partition.get(partition)
        if env is not None and env.lines and env.size + 1 + len(line) > max_bytes:
            env = None
        if env is None:
            env = Envelope(partition, key)
            open_by_partition[partition] = env
            envelopes.append(env)
        env.size += len(line) + (1 if env.lines else 0)
        env.lines.append(line)
    return Batch(envelopes, failed)
