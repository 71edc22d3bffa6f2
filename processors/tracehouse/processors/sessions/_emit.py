"""The sessionizer's flush: what was folded becomes durable, in an order that survives a crash anywhere.

Every ``flush_interval_ms`` (and at a graceful stop), for each owned partition with changes:

1. close the sessions due at its watermark, evict those past their retention;
2. send the ``user_trace`` facts of the traces folded for the first time to ``user-rollups.v1`` and wait
   until the broker has them all: a fact must be durable before the state that counts its trace, or a
   crash in between would lose it for good;
3. write the dirty states to the table's changelog, then one lone watermark sentinel per partition
   (see ``_changelog``);
4. emit the dirty sessions' records as NDJSON envelopes to ``sessions.v1`` on the source partition;
5. only then ack the events folded so far (faust's commit flushes the producer first, so a committed
   offset never passes state that is not in the changelog).

Every send's future is awaited before the input is acked: a refused or timed-out send raises, nothing
is acked, and the worker stops so its partitions are replayed. Batches of partitions revoked meanwhile
are not sent: their next owner replays them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from tracehouse.schemas import encode_event
from tracehouse.schemas.kafka import pack

from ._changelog import encode_state, state_key, watermark_key, watermark_value
from ._fold import Folder
from ._session import SessionState, seal


@dataclass(slots=True)
class FlushBatch:
    """What one flush writes for one partition, encoded before the first await."""

    partition: int
    generation: int
    changelog: list[tuple[bytes, bytes | None]]
    records: list[bytes]
    facts: dict[int, list[bytes]]
    watermark_ms: int
    folded_offset: int


#: Eviction candidates of a partition (``Folder.evictable``) and the ones the store confirmed holding.
Evictions = Mapping[int, tuple[list[SessionState], set[str]]]


def clock_version() -> int:
    """The version floor of a record written now: records carry versions that grow with the wall clock
    (and by one per change within a millisecond), so a record written after a restart, or by
    reconciliation, is newer than every record before it (``tracehouse.storage.version_at``)."""
    return int(time.time() * 1000) * 1000


def snapshot(folder: Folder, generations: dict[int, int], committed: Callable[[int], int | None],
             evictions: Evictions | None = None) -> list[FlushBatch]:  # fmt: skip
    """Steps 1 and the encoding of 2-4: the batches of every partition with something to write.
    ``evictions``: what a store confirmed (see ``Sessionizer._confirm_evictions``); without it,
    sessions past their retention are evicted unconfirmed."""
    batches = []
    floor = clock_version()
    for p, part in folder.parts.items():
        folder.close_due(part)
        if evictions is not None:
            candidates, confirmed = evictions.get(p, ([], set()))
            evicted = folder.evict(part, candidates, confirmed)
        else:
            evicted = folder.evict(part, folder.evictable(part, committed(p)))
        facts, part.outbox = part.outbox, {}
        mark = (part.watermark_ms, part.folded_offset)
        if not part.dirty and not facts and not evicted and not part.reemit and mark == part.saved_watermark:
            continue
        part.saved_watermark = mark
        changelog: list[tuple[bytes, bytes | None]] = []
        records = []
        for sid in part.dirty:
            state = part.sessions[sid]
            state.version = max(state.version, floor)
            seal(state)  # 8 bytes a trace id in the changelog, however long the session
            changelog.append((state_key(p, sid), encode_state(state)))
            if not state.hidden:
                records.append(encode_event(state.to_record()))
        changelog.extend((state_key(p, sid), None) for sid in evicted)
        for sid in part.reemit - part.dirty:  # records only: the changelog holds these states already
            if (restored := part.sessions.get(sid)) is not None:
                records.append(encode_event(restored.to_record()))
        part.reemit.clear()
        part.dirty.clear()
        batches.append(FlushBatch(p, generations.get(p, 0), changelog, records, facts, *mark))
    return batches


@dataclass(slots=True)
class Emitter:
    """Sends flush batches with the app's producer (steps 2-4)."""

    producer: Any
    table: MutableMapping[bytes, bytes | None]
    changelog_topic: str
    sessions_topic: str
    rollups_topic: str
    max_lines: int
    owned: Callable[[FlushBatch], bool]

    async def _envelopes(self, topic: str, partition: int, lines: list[bytes], batch: FlushBatch) -> list[Any]:
        sent = []
        for env in pack(((partition, None, line) for line in lines), max_lines=self.max_lines):
            if not self.owned(batch):
                break
            sent.append(await self.producer.send(topic, None, env.value, partition, None, env.headers()))
        return sent

    async def send(self, batches: list[FlushBatch]) -> tuple[int, int]:
        """Send every batch's facts, state and records in that order; returns ``(facts, records)``."""
        facts = records = 0
        sent: list[Any] = []
        for batch in batches:  # 2. facts, durable before the state that counts their traces
            for target, lines in sorted(batch.facts.items()):
                sent += await self._envelopes(self.rollups_topic, target, lines, batch)
                facts += len(lines) if self.owned(batch) else 0
        await asyncio.gather(*sent)
        sent = []
        for batch in batches:  # 3. state
            for key, value in batch.changelog:
                if not self.owned(batch):
                    break
                if value is None:
                    self.table.pop(key, None)
                else:
                    self.table[key] = value
                sent.append(await self.producer.send(self.changelog_topic, key, value, batch.partition, None, None))
        await asyncio.gather(*sent)
        sent = []
        for batch in batches:  # each sentinel alone in its batch: see _changelog
            if self.owned(batch):
                key, wm = watermark_key(batch.partition), watermark_value(batch.watermark_ms, batch.folded_offset)
                self.table[key] = wm
                sent.append(await self.producer.send(self.changelog_topic, key, wm, batch.partition, None, None))
        for batch in batches:  # 4. session records
            sent += await self._envelopes(self.sessions_topic, batch.partition, batch.records, batch)
            records += len(batch.records) if self.owned(batch) else 0
        await asyncio.gather(*sent)
        return facts, records
