"""Review regressions: a trace is logged once (first write wins), and no single event can make a
partition's insert fail forever."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from test_sink_kafka import config, count, create_topics, eventually, make_trace, publish, running

from tracehouse.app.embedded import TansuBroker
from tracehouse.processors import Sink
from tracehouse.schemas import Topics, decode_event, encode_envelope, example
from tracehouse.storage import RowBatch, Store, existing_trace_ids, write_batch

T0 = 1_795_343_520_000


def _trace(trace_id: str, user: str, ts: int = T0, **extra: object) -> bytes:
    return orjson.dumps({"type": "trace", "trace_id": trace_id, "timestamp_ms": ts, "execution_time_ms": 5,
                         "state": "OK", "metadata": {"mlflow.trace.user": user}, "tags": {"v": user},
                         "spans": [{"span_id": "00000000000000a1", "name": "root", "start_time_ns": ts * 10**6,
                                    "end_time_ns": ts * 10**6 + 1}], **extra})  # fmt: skip


def test_first_event_of_a_trace_id_wins_within_a_batch(store: Store) -> None:
    batch = RowBatch()
    batch.add(decode_event(_trace("tr-" + "a" * 32, "alice")))
    batch.add(decode_event(_trace("tr-" + "a" * 32, "mallory", ts=T0 + 1)))
    write_batch(store, batch)
    assert store.query("SELECT user_id, timestamp_ms FROM traces") == [("alice", T0)]
    assert count(store, "SELECT count() FROM spans") == 1
    assert existing_trace_ids(store, {"tr-" + "a" * 32, "tr-" + "b" * 32}) == {"tr-" + "a" * 32}


def test_drop_traces_keeps_later_tag_events(store: Store) -> None:
    batch = RowBatch()
    batch.add(decode_event(example("trace")))
    batch.add(decode_event(example("tag_set")))
    trace_id = "tr-4f3c2a1b0e9d8c7b6a5f4e3d2c1b0a99"
    assert batch.drop_traces({trace_id}) == 1
    assert batch.rows["traces"] == []
    assert batch.rows["spans"] == []
    assert [(r[1], r[2]) for r in batch.rows["trace_tags"]] == [("reviewed", "yes")]


def test_absurd_token_counts_and_backfills_still_insert(store: Store) -> None:
    huge = {"input_tokens": 2**63, "output_tokens": 2**63, "total_tokens": 2**64 + 5}
    batch = RowBatch()
    usage = {"mlflow.trace.user": "u", "mlflow.trace.tokenUsage": json.dumps(huge)}
    batch.add(decode_event(_trace("tr-" + "c" * 32, "u", metadata=usage)))
    month = 31 * 86_400_000
    for i in range(130):  # one trace per month over ~11 years: more than 100 partitions in one insert
        batch.add(decode_event(_trace(f"tr-{i:032x}", "u", ts=T0 - i * month)))
    write_batch(store, batch, token="backfill")
    assert count(store, "SELECT count() FROM traces") == 131
    assert store.query(f"SELECT total_tokens FROM traces WHERE trace_id = 'tr-{'c' * 32}'") == [(2**64 - 1,)]


@pytest.mark.integration
def test_sink_skips_a_trace_id_logged_by_an_earlier_batch(
    broker: TansuBroker, topics: Topics, store: Store, store_uri: str
) -> None:
    first, again = _trace("tr-" + "d" * 32, "alice"), _trace("tr-" + "d" * 32, "mallory", ts=T0 + 9)

    async def main() -> None:
        await create_topics(broker.bootstrap, topics, 1)
        sink = Sink(config(broker, topics, store_uri), store)
        async with running(sink):
            await publish(broker.bootstrap, topics.traces, [(0, encode_envelope([first, make_trace(1)]))])
            await eventually(lambda: count(store, "SELECT count() FROM traces") == 2, what="first batch")
            await publish(broker.bootstrap, topics.traces, [(0, encode_envelope([again, make_trace(2)]))])
            await eventually(lambda: count(store, "SELECT count() FROM traces") == 3, what="second batch")
            await eventually(lambda: sink.stats().duplicates_skipped == 1, what="the duplicate to be counted")

    asyncio.run(main())
    assert store.query(f"SELECT user_id, timestamp_ms FROM traces WHERE trace_id = 'tr-{'d' * 32}'") == [("alice", T0)]
    tags = store.query(f"SELECT value FROM trace_tags FINAL WHERE trace_id = 'tr-{'d' * 32}' AND key = 'v'")
    assert tags == [("alice",)]
