"""Read-your-writes: a read waits until the sink has stored everything this server acknowledged.

The gateway notes the offset of every event it published. Before a read, :meth:`WriteFence.wait`
takes the highest noted offset per partition and waits until the sink's committed offset passes it
(the sink commits only after the rows are in ClickHouse), at most ``timeout_s``. Where the sink runs
in this process (``tracehouse up``) it is asked directly; otherwise the sink's consumer group's
committed offsets are polled from Kafka, one fetch shared by all waiting requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

log = logging.getLogger("tracehouse.gateway")

Partition = tuple[str, int]
_POLL_S: Final = 0.05


class CommitWaiter(Protocol):
    async def __call__(self, offsets: Mapping[Partition, int], timeout_s: float) -> bool:
        """Wait until the record at each ``(topic, partition) → offset`` is committed; False on timeout."""
        ...


class WriteFence:
    """Offsets this server produced, and the wait that makes reads see them."""

    def __init__(self, waiter: CommitWaiter, timeout_s: float = 10.0) -> None:
        self._waiter = waiter
        self.timeout_s = timeout_s
        self._produced: dict[Partition, int] = {}
        self._passed: dict[Partition, int] = {}

    def note(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        if offset > self._produced.get(key, -1):
            self._produced[key] = offset

    def reset(self) -> None:
        """Forget every offset: the broker was replaced (offsets start again), after a drain."""
        self._produced.clear()
        self._passed.clear()

    def pending(self) -> dict[Partition, int]:
        """Offsets produced but not yet seen committed."""
        return {tp: off for tp, off in self._produced.items() if off > self._passed.get(tp, -1)}

    async def wait(self) -> bool:
        """Wait until every write acknowledged so far is readable. ``False`` if ``timeout_s`` passed first."""
        target = self.pending()
        if not target:
            return True
        ok = await self._waiter(target, self.timeout_s)
        if ok:
            for tp, off in target.items():
                if off > self._passed.get(tp, -1):
                    self._passed[tp] = off
        else:
            log.warning("read-your-writes wait timed out after %.1f s for %s", self.timeout_s, target)
        return ok


class GroupCommitWaiter:
    """Polls a consumer group's committed offsets (Kafka ``OffsetFetch``); concurrent waits share
    one fetch at a time."""

    def __init__(self, bootstrap: str, group_id: str, poll_s: float = _POLL_S) -> None:
        self.bootstrap, self.group_id, self.poll_s = bootstrap, group_id, poll_s
        self._admin: Any = None
        self._inflight: asyncio.Future[dict[Partition, int]] | None = None
        #: Partitions asked about so far (OffsetFetch names them: Tansu does not answer "all").
        self._watched: set[Partition] = set()

    async def start(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="tracehouse-gateway-fence")
        await admin.start()
        self._admin = admin

    async def stop(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    async def _fetch(self) -> dict[Partition, int]:
        from aiokafka import TopicPartition

        partitions = [TopicPartition(t, p) for t, p in sorted(self._watched)]
        raw = await self._admin.list_consumer_group_offsets(self.group_id, partitions=partitions)
        return {(tp.topic, tp.partition): meta.offset for tp, meta in raw.items() if meta.offset >= 0}

    async def committed(self) -> dict[Partition, int]:
        """The group's committed offsets (next offset to read per partition)."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._inflight)

    async def __call__(self, offsets: Mapping[Partition, int], timeout_s: float) -> bool:
        if self._admin is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._watched.update(offsets)
        while True:
            try:
                committed = await self.committed()
            except Exception as exc:  # a broker hiccup: keep trying until the deadline
                log.debug("could not fetch committed offsets of %s: %r", self.group_id, exc)
                committed = {}
            if all(committed.get(tp, -1) > off for tp, off in offsets.items()):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(self.poll_s, remaining))


def sink_waiter(wait_committed: Callable[[Mapping[Partition, int], float | None], Awaitable[bool]]) -> CommitWaiter:
    """A waiter over an in-process sink's ``wait_committed``."""

    async def wait(offsets: Mapping[Partition, int], timeout_s: float) -> bool:
        return await wait_committed(offsets, timeout_s)

    return wait
