"""Publish the gateway's events to Kafka and remember where they landed.

Each event is one message (a one-line NDJSON envelope, the format the processors read) keyed as the
SDK keys it, so Kafka's default partitioner puts a session's traces on one partition. A request is
acknowledged only after the broker acknowledged every event of it (``acks=all``); the offsets are
recorded for read-your-writes (:class:`~tracehouse.gateway.WriteFence`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

from tracehouse.query._http import ApiError
from tracehouse.schemas import Event, encode_event, envelope_headers

from ._errors import InvalidRequest
from ._fence import WriteFence
from ._mlflow import event_key

log = logging.getLogger("tracehouse.gateway")

_SEND_TIMEOUT_S: Final = 30.0


class Unavailable(ApiError):
    """Kafka did not take the events: a 503, which the client retries."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "TEMPORARILY_UNAVAILABLE", message)


class EventWriter:
    """An aiokafka producer for one topic; started and stopped with the HTTP app."""

    def __init__(
        self, bootstrap: str, topic: str, fence: WriteFence | None = None, client_id: str = "tracehouse-gateway"
    ) -> None:
        self.bootstrap, self.topic, self.fence, self.client_id = bootstrap, topic, fence, client_id
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=False,  # Tansu has no idempotent producers; the sink makes effects exactly-once
            linger_ms=2,
            max_request_size=1024 * 1024,
            request_timeout_ms=int(_SEND_TIMEOUT_S * 1000),
        )
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def write(self, events: Sequence[Event]) -> list[tuple[int, int]]:
        """Publish ``events`` and wait for the broker's acknowledgement of all of them. Returns the
        ``(partition, offset)`` of each. Raises :class:`Unavailable` when Kafka did not take them."""
        if not events:
            return []
        producer = self._producer
        if producer is None:
            raise InvalidRequest(
                "this server has no Kafka producer (start it with --kafka-bootstrap to accept writes)",
                error_code="FEATURE_DISABLED", status=501,
            )  # fmt: skip
        headers = envelope_headers(1)
        try:
            futures = [
                await producer.send(self.topic, encode_event(e), key=event_key(e).encode(), headers=headers)
                for e in events
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
