"""The write side of the HTTP server: a Kafka writer, the read-your-writes fence, and a short memory
of the traces it accepted (so their spans, uploaded right after, carry the trace's identity)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tracehouse.schemas import Event, Topics, TraceEvent, resolve_identity
from tracehouse.schemas.errors import Unavailable

from ._config import GatewayConfig
from ._fence import CommitWaiter, GroupCommitWaiter, WriteFence
from ._writer import EventWriter

_REMEMBERED: Final = 100_000


@dataclass(frozen=True, slots=True)
class TraceIdentity:
    experiment_id: str
    timestamp_ms: int
    user_id: str
    session_id: str


class Gateway:
    """Start it before serving and stop it after (the app's lifespan does both)."""

    def __init__(self, config: GatewayConfig, commit_waiter: CommitWaiter | None = None) -> None:
        self.config = config
        self.topics = Topics(config.topic_prefix)
        self._group_waiter: GroupCommitWaiter | None = None
        waiter = commit_waiter
        if waiter is None:
            waiter = self._group_waiter = GroupCommitWaiter(config.bootstrap, config.sink_group)
        self.fence = WriteFence(waiter, config.read_your_writes_timeout_s)
        self.writer = EventWriter(config.bootstrap, self.topics.traces, self.fence,
                                  compression=config.compression)
        self._identities: OrderedDict[str, TraceIdentity] = OrderedDict()
        #: While set, writes are refused with a 503 and this ``Retry-After`` (the broker is being replaced).
        self.paused: tuple[str, float] | None = None

    async def start(self) -> None:
        await self.writer.start()
        if self._group_waiter is not None:
            await self._group_waiter.start()

    async def stop(self) -> None:
        try:
            await self.writer.stop()
        finally:
            if self._group_waiter is not None:
                await self._group_waiter.stop()

    def pause(self, reason: str, retry_after_s: float) -> None:
        """Refuse writes (503 with ``Retry-After``) until :meth:`resume`."""
        self.paused = (reason, retry_after_s)

    async def resume(self, *, new_broker: bool = False) -> None:
        """Take writes again; ``new_broker``: reconnect and forget the offsets of the old broker."""
        if new_broker:
            await self.writer.stop()
            self.fence.reset()
            await self.writer.start()
        self.paused = None

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish and wait for Kafka's acknowledgement; remember the identity of each trace."""
        if self.paused is not None:
            reason, retry_after = self.paused
            error = Unavailable(f"writes are paused: {reason}; retry in {retry_after:.0f}s")
            error.retry_after_s = retry_after
            raise error
        await self.writer.write(events)
        for event in events:
            if isinstance(event, TraceEvent):
                self._remember(event)

    def _remember(self, event: TraceEvent) -> None:
        user, session = resolve_identity(event.metadata)
        known = TraceIdentity(event.experiment_id, event.timestamp_ms, user or "", session or "")
        self._identities[event.trace_id] = known
        self._identities.move_to_end(event.trace_id)
        while len(self._identities) > _REMEMBERED:
            self._identities.popitem(last=False)

    def identity(self, trace_id: str) -> TraceIdentity | None:
        return self._identities.get(trace_id)
