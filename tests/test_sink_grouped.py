"""Grouped flushes: the sink writes the due batches of several partitions in one insert per table,
and a crash inside such a write is replayed one partition at a time without duplicates or gaps.

Counts are taken WITHOUT ``FINAL``, as in test_sink_kafka: a duplicate row would show.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from test_sink_kafka import (
    config,
    count,
    create_topics,
    envelopes_of,
    make_trace,
    publish,
    running,
    scope_of,
    tp_offsets,
)

from tracehouse.app.embedded import TansuBroker
from tracehouse.processors import Ledger, Rejection, Sink, validate_line
from tracehouse.schemas import Topics
from tracehouse.storage import RowBatch, Store, write_batch

pytestmark = pytest.mark.integration


def test_due_batches_of_several_partitions_are_written_together(
    broker: TansuBroker, topics: Topics, store: Store, store_uri: str
) -> None:
    lines = [make_trace(i) for i in range(400)]

    async def main() -> Sink:
        await create_topics(broker.bootstrap, topics, 4)
        messages = [(n % 4, e) for n, e in enumerate(envelopes_of(lines, 8))]
        ends = await publish(broker.bootstrap, topics.traces, messages)
        sink = Sink(config(broker, topics, store_uri), store)
        async with running(sink):
            last = {tp: end - 1 for tp, end in tp_offsets(topics.traces, ends).items()}
            assert await sink.wait_committed(last, timeout_s=30)
        return sink

    stats = asyncio.run(main()).stats()
    assert stats.events_written == 400
    # Four partitions' batches came of age together: fewer insert rounds than batches.
    assert stats.writes < stats.batches, stats
    assert count(store, "SELECT count() FROM traces") == 400
    assert count(store, "SELECT count() FROM spans") == 1200
    assert count(store, "SELECT count() FROM trace_tags") == 400


async def _read(bootstrap: str, topic: str, partition: int, n: int) -> list[Any]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    tp = TopicPartition(topic, partition)
    reader.assign([tp])
    await reader.seek_to_beginning(tp)
    records: list[Any] = []
    while len(records) < n:
        records += (await reader.getmany(tp, timeout_ms=1000, max_records=n - len(records))).get(tp, [])
    await reader.stop()
    return records


@pytest.mark.parametrize("stored", ["spans and tags, not traces", "everything"])
def test_a_crash_inside_a_grouped_write_is_replayed_exactly(
    broker: TansuBroker, topics: Topics, store: Store, store_uri: str, stored: str
) -> None:
    """A sink wrote the ledger rows of two partitions' batches [0, 6] and inserted them as one
    group (all of it, or every table but ``traces``, which goes last), then died before committing.
    The next sink replays each partition alone, under a token that cannot match the group's, and
    inserts exactly what is missing."""

    # No background merges: a duplicate row must stay visible to count() until the assertions.
    for table in ("traces", "spans", "trace_tags"):
        store.command(f"SYSTEM STOP MERGES {table}")

    async def main() -> Sink:
        await create_topics(broker.bootstrap, topics, 2)
        for p in (0, 1):
            lines = [make_trace(p * 1000 + i) for i in range(50)]
            await publish(broker.bootstrap, topics.traces, [(p, e) for e in envelopes_of(lines, 5)])
        merged = RowBatch()
        for p in (0, 1):
            for rec in await _read(broker.bootstrap, topics.traces, p, 7):
                for line in rec.value.split(b"\n"):
                    event = validate_line(line)
                    assert not isinstance(event, Rejection)
                    merged.add(event)
        Ledger(store, await scope_of(broker, topics)).record_many([(topics.traces, 0, 0, 6), (topics.traces, 1, 0, 6)])
        if stored != "everything":
            merged.rows["traces"] = []
        write_batch(store, merged, "group:crashed")
        assert count(store, "SELECT count() FROM spans") == 2 * 35 * 3

        sink = Sink(config(broker, topics, store_uri, max_batch_rows=1), store)
        async with running(sink):
            assert await sink.wait_committed({(topics.traces, 0): 9, (topics.traces, 1): 9}, timeout_s=30)
        return sink

    stats = asyncio.run(main()).stats()
    assert stats.replayed_batches == 2
    assert count(store, "SELECT count() FROM traces") == 100
    assert count(store, "SELECT uniqExact(trace_id) FROM traces") == 100
    assert count(store, "SELECT count() FROM spans") == 300
    assert count(store, "SELECT count() FROM trace_tags") == 100
