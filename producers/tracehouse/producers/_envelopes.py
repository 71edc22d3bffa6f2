"""Encode the SDK's queued items and pack them into envelopes, one per Kafka partition.

The partition key and the packing are :mod:`tracehouse.schemas.kafka`'s, shared with the ingest
gateway and the sessionizer: every event of one session lands on one partition, and any other Kafka
client keyed the same way agrees with the SDK.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tracehouse.schemas import split_envelope
from tracehouse.schemas.kafka import Envelope, pack, partition_for, partition_key

from ._events import materialize
from ._replay import Outgoing

_log = logging.getLogger("tracehouse")


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
    failed = 0

    def lines() -> Iterator[tuple[int, bytes, bytes]]:
        nonlocal failed
        for item in items:
            encoded = encode_item(item)
            if encoded is None:
                failed += 1
                continue
            line, key = encoded
            yield partition_for(key, partitions), key, line

    envelopes = pack(lines(), max_bytes)
    return Batch(envelopes, failed)


def outgoing(batch: Batch, partition_count: int) -> list[Outgoing]:
    """The envelopes of ``batch`` as the publisher sends them."""
    return [Outgoing(env.partition, env.key, env.value, env.count, partition_count) for env in batch.envelopes]


def repack(envelopes: list[Outgoing], partitions: Sequence[int], max_bytes: int) -> list[Outgoing]:
    """``envelopes`` for a topic of ``partitions``: unchanged when they were packed for as many
    partitions, else split into their lines, each keyed again from its event and packed anew (the topic
    was recreated with another partition count, e.g. by a replaced broker). Keeps the ``replay`` mark."""
    count = len(partitions)
    if all(out.partition_count == count for out in envelopes):
        return envelopes
    kept = [out for out in envelopes if out.partition_count == count]
    for replay in (False, True):
        lines = []
        for out in envelopes:
            if out.partition_count == count or out.replay is not replay:
                continue
            for line in split_envelope(out.value):
                try:
                    key = partition_key(orjson.loads(line)).encode()
                except Exception:  # our own encoding: cannot happen, but never lose the line over it
                    key = out.key or b""
                lines.append((partition_for(key, partitions), key, line))
        for env in pack(lines, max_bytes):
            kept.append(Outgoing(env.partition, env.key, env.value, env.count, count, replay))
    return kept
