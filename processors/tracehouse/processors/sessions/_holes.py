"""Reading the envelopes a restored partition needs but faust will not deliver again.

A sessionizer restores a partition from its changelog and must go on right after the offset that
state was folded up to. Sometimes faust's recovery restores an older state than the committed offset
of the input (the changelog's last flush not seen), and then starts the stream at the committed
offset: the envelopes in between were folded by the previous owner, but not into the state restored
here. They are below the committed offset, so faust never delivers them again (a seek back can be
undone by faust's own seek to the committed offset). This reader fetches exactly that range with a
plain consumer outside faust, so the worker folds it (idempotently) before the envelope that revealed
the hole.

A range may also hold fewer records than offsets: Kafka offsets can have real gaps (transaction
markers, compaction, and Tansu, whose offsets skipped after a broker generation change in the soak).
A read that got to the end of the range has everything the range holds, gaps included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

log = logging.getLogger("tracehouse.sessionizer")

#: Longest wait for a range that should be in the topic.
READ_TIMEOUT_S: Final = 30.0


class HoleReader:
    """Fetches ``[start, end)`` of a partition (one consumer, assigned per read, never in a group)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._consumer: Any = None

    async def read(self, topic: str, partition: int, start: int, end: int, timeout_s: float = READ_TIMEOUT_S
                   ) -> list[tuple[int, bytes]] | None:  # fmt: skip
        """The records the partition holds at offsets ``start`` to ``end - 1``, in order (offsets may
        have gaps), or ``None`` if the read did not get to the end of the range in ``timeout_s`` (the
        broker away, or the range past the partition's end)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                              enable_auto_commit=False, auto_offset_reset="earliest")  # fmt: skip
            await self._consumer.start()
        consumer = self._consumer
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: dict[int, bytes] = {}
        reached = end <= start
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not reached and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, ()):
                if start <= record.offset < end:
                    out[record.offset] = record.value or b""
                reached = reached or record.offset >= end - 1
        if not reached:
            log.warning("%s[%d]: reading [%d, %d) again did not get to its end in %.0f s (%d records read)",
                        topic, partition, start, end, timeout_s, len(out))  # fmt: skip
            return None
        return sorted(out.items())

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
