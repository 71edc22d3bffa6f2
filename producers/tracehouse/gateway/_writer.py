"""Publish the gateway's events to Kafka and remember where they landed.

Events are keyed and packed as the SDK packs them (:mod:`tracehouse.schemas.kafka`): each goes to the
partition its key maps to, and the events of one request bound for one partition travel as one NDJSON
envelope. A request is acknowledged only after the broker acknowledged every envelope of it
(``acks=all``); the offsets are recorded for read-your-writes (:class:`~tracehouse.gateway.WriteFence`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

from tracehouse.schemas import Event, SessionRecord, UserTraceFact, encode_event
from tracehouse.schemas.errors import InvalidRequest, Unavailable
from tracehouse.schemas.kafka import (
    KAFKA_MAX_MESSAGE_BYTES,
    MAX_ENVELOPE_BYTES,
    pack,
    partition_for,
    partition_key,
    producer_compression,
)

from ._fence import WriteFence

log = logging.getLogger("tracehouse.gateway")

_SEND_TIMEOUT_S: Final = 30.0


def event_key(event: Event) -> str:
    """The Kafka key of an event the gateway publishes: :func:`tracehouse.schemas.kafka.partition_key`,
    the SDK's rule. Session records and user facts are the sessionizer's, never the gateway's."""
    if isinstance(event, SessionRecord | UserTraceFact):
        raise TypeError(f"the gateway does not publish {type(event).__name__}")
    return partition_key(event)


class EventWriter:
    """An aiokafka producer for one topic; started and stopped with the HTTP app."""

    def __init__(
        self, bootstrap: str, topic: str, fence: WriteFence | None = None, client_id: str = "tracehouse-gateway",
        *, compression: str = "zstd",
    ) -> None:  # fmt: skip
        self.bootstrap, self.topic, self.fence, self.client_id = bootstrap, topic, fence, client_id
        self.compression = compression
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=False,  # Tansu has no idempotent producers; the sink makes effects exactly-once
            linger_ms=2,
            max_request_size=KAFKA_MAX_MESSAGE_BYTES,
            request_timeout_ms=int(_SEND_TIMEOUT_S * 1000),
            compression_type=producer_compression(self.compression),
        )
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def write(self, events: Sequence[Event]) -> list[tuple[int, int]]:
        """Publish ``events`` and wait for the broker's acknowledgement of all of them. Returns the
        ``(partition, offset)`` of each envelope sent. Raises :class:`Unavailable` when Kafka did not
        take them."""
        if not events:
            return []
        lines = [(event_key(e).encode(), encode_event(e)) for e in events]
        for event, (_, line) in zip(events, lines, strict=True):
            if len(line) > MAX_ENVELOPE_BYTES:  # Kafka would refuse it: bad input, not a 5xx to retry
                what = f"{type(event).__name__} of trace {getattr(event, 'trace_id', '?')}"
                raise InvalidRequest(f"the {what} is {len(line)} bytes of JSON; the limit is {MAX_ENVELOPE_BYTES}",
                                     status=413)  # fmt: skip
        producer = self._producer
        if producer is None:
            raise InvalidRequest(
                "this server has no Kafka producer (start it with --kafka-bootstrap to accept writes)",
                error_code="FEATURE_DISABLED", status=501,
            )  # fmt: skip
        try:
            partitions = sorted(await asyncio.wait_for(producer.partitions_for(self.topic), _SEND_TIMEOUT_S))
            envelopes = pack(((partition_for(key, partitions), key, line) for key, line in lines), MAX_ENVELOPE_BYTES)
            futures = [
                await producer.send(self.topic, env.value, key=env.key, partition=env.partition, headers=env.headers())
                for env in envelopes
            ]
            results = await asyncio.wait_for(asyncio.gather(*futures), _SEND_TIMEOUT_S)
        except (TimeoutError, OSError) as exc:
            raise Unavailable(f"Kafka did not acknowledge the write: {exc!r}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("aiokafka"):
                raise Unavailable(f"Kafka did not acknowledge the write: {exc!r}") from exc
            raise
        out = [(int(r.partition), int(r.offset)) for r in results]
        if self.fence is not None:
            for partition, offset in out:
                self.fence.note(self.topic, partition, offset)
        return out
