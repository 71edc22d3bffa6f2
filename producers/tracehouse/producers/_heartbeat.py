"""The SDK's heartbeat: every ``heartbeat_interval`` seconds (and once at shutdown) the publisher thread
sends an ``sdk_heartbeat`` event with its counters to ``traces.v1``, so ``tracehouse status`` shows what
apps dropped beside what the pipeline lost. Best effort: it goes straight to the producer, outside the
buffer and the counters, and a heartbeat that cannot be sent is skipped (the next one carries the
totals).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tracehouse.schemas import SdkHeartbeat, encode_event, envelope_headers
from tracehouse.schemas.kafka import partition_for

from ._publishers import PublisherStats

_log = logging.getLogger("tracehouse")
_SEND_TIMEOUT = 5.0


def _sdk_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tracehouse")[:64]
    except PackageNotFoundError:
        return ""


class Heartbeat:
    """Builds and sends this process's heartbeats (in the publisher thread)."""

    def __init__(self, topic: str, interval_s: float, service: str, stats: Callable[[], PublisherStats]) -> None:
        self.topic, self.interval_s, self._stats = topic, interval_s, stats
        self.process_id = f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.service = (service or os.path.basename(sys.argv[0] or "") or "python")[:1000]
        self.version = _sdk_version()
        self.sent = 0

    def event(self) -> bytes:
        s = self._stats()
        return encode_event(SdkHeartbeat(
            process_id=self.process_id, time_ms=int(time.time() * 1000), accepted=s.accepted,
            published=s.published, dropped=s.dropped, failed=s.failed, buffered=s.buffered, service=self.service,
            sdk_version=self.version,
        ))  # fmt: skip

    async def send(self, producer: Any, partitions: list[int] | None, timeout_s: float = _SEND_TIMEOUT) -> None:
        """Send one heartbeat with ``producer``; never raises."""
        import asyncio

        if producer is None or not partitions:
            return
        try:
            key = self.process_id.encode()
            future = await producer.send(self.topic, self.event(), key=key, partition=partition_for(key, partitions),
                                         headers=envelope_headers(1))  # a one-event envelope like any other
            await asyncio.wait_for(future, timeout_s)
            self.sent += 1
        except Exception:
            _log.debug("tracehouse: heartbeat not sent", exc_info=True)

    async def run(self, pause: Callable[[float], Awaitable[None]], stop: Any, producer: Callable[[], Any],
                  partitions: Callable[[Any], Awaitable[list[int] | None]]) -> None:  # fmt: skip
        """Send one every ``interval_s`` while connected, until ``stop`` (an ``asyncio.Event``) is set (the
        publisher sends the last one as it shuts down)."""
        while True:
            await pause(self.interval_s)
            if stop.is_set():
                return
            current = producer()
            if current is not None:
                await self.send(current, await partitions(current))
