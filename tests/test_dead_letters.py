"""Dead letters you can act on, on the real broker, sink and chDB: the refusal limit stops a sink fed a
stream it cannot read without committing what it refused; `dlq list` shows reasons and origins; `dlq
replay` reinserts fixed letters (stored once however often replay runs), stops on a letter that would be
refused again, and drops."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from test_sink_kafka import (
    config,
    count,
    create_topics,
    envelopes_of,
    eventually,
    group_committed,
    group_of,
    make_trace,
    publish,
    running,
    trace_id,
)

from tracehouse.app.cli import processors_main as cli_main
from tracehouse.app.embedded import TansuBroker
from tracehouse.processors import HEADER_REPLAYED_FROM, Sink, read_dlq
from tracehouse.schemas import Topics, encode_envelope
from tracehouse.schemas.errors import DeadLetterLimitExceeded
from tracehouse.storage import Store

pytestmark = pytest.mark.integration

#: A producer writing another format: CSV rows where the sink expects NDJSON events.
WRONG_FORMAT = b"\n".join(b"user-%d,session-%d,2026-05-01T10:00:00Z,hello" % (i, i) for i in range(30))


async def read_topic(bootstrap: str, topic: str, partition: int) -> list[Any]:
    """Every record of one partition, read from the beginning to the end the fetches report."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    tp = TopicPartition(topic, partition)
    records: list[Any] = []
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            records += (await consumer.getmany(tp, timeout_ms=200)).get(tp, [])
            high = consumer.highwater(tp)
            if high is not None and await consumer.position(tp) >= high:
                break
        return records
    finally:
        await consumer.stop()


def test_refusal_limit_stops_the_sink_without_committing_what_it_refused(
    broker: TansuBroker, topics: Topics, store: Store, store_uri: str
) -> None:
    """Good envelopes are stored and committed; then a producer sends 30 lines of CSV: the sink stops at
    the 25th refused line in a row with a message saying what and how to proceed, and commits nothing
    past them. A sink started afterwards (here with the limit off, as after a fix) reads them again:
    nothing was lost."""
    good = envelopes_of([make_trace(i) for i in range(20)], 10)  # offsets 0 and 1
    after = encode_envelope([make_trace(20)])  # offset 3, behind the CSV envelope at offset 2

    async def main() -> None:
        await create_topics(broker.bootstrap, topics, 1)
        await publish(broker.bootstrap, topics.traces, [(0, e) for e in good])
        sink = Sink(config(broker, topics, store_uri, max_consecutive_refused=25), store)
        task = asyncio.create_task(sink.run())
        assert await sink.wait_committed({(topics.traces, 0): 1}, timeout_s=30)
        await publish(broker.bootstrap, topics.traces, [(0, WRONG_FORMAT), (0, after)])
        with pytest.raises(DeadLetterLimitExceeded) as stopped:
            await asyncio.wait_for(task, 60)
        message = str(stopped.value)
        assert "the sink stopped: 25 lines in a row were refused" in message
        assert "(TRACEHOUSE_SINK_MAX_CONSECUTIVE_REFUSED=25)" in message
        assert f"Last refused: {topics.traces}[0] offset 2 line 24: undecodable event" in message
        assert f"Nothing past the last commit ({topics.traces}[0] at 2) was committed" in message
        assert "tracehouse dlq list" in message
        assert "tracehouse dlq replay --policy stop-on-error" in message
        assert await group_committed(broker.bootstrap, topics.traces, 1, group_of(topics)) == {0: 2}
        assert count(store, "SELECT count() FROM traces") == 20  # trace 20, after the CSV, is not taken

        fixed = Sink(config(broker, topics, store_uri, max_consecutive_refused=0), store)
        async with running(fixed):
            assert await fixed.wait_committed({(topics.traces, 0): 3}, timeout_s=30)
        assert fixed.stats().events_rejected == 30
        letters = await read_dlq(broker.bootstrap, topics)
        # Dead-lettering is at least once: the first sink's letters were sent before it stopped.
        assert {d.origin for d in letters} == {(topics.traces, 0, 2, line) for line in range(30)}
        assert all(d.value == WRONG_FORMAT.split(b"\n")[d.origin_line] for d in letters)

    asyncio.run(main())
    assert {r[0] for r in store.query("SELECT trace_id FROM traces")} == {trace_id(i) for i in range(21)}


def test_the_sink_command_exits_3_with_what_was_refused_and_how_to_proceed(
    broker: TansuBroker, topics: Topics, tmp_path: Path
) -> None:
    asyncio.run(create_topics(broker.bootstrap, topics, 1))
    asyncio.run(publish(broker.bootstrap, topics.traces, [(0, encode_envelope([make_trace(1)])), (0, WRONG_FORMAT)]))
    proc = subprocess.run(
        [sys.executable, "-m", "tracehouse.processors", "sink", "--bootstrap", broker.bootstrap,
         "--topic-prefix", topics.prefix, "--store", f"chdb://{tmp_path / 'chdb'}", "--group", group_of(topics),
         "--migrate", "--max-consecutive-refused", "10", "--session-timeout-ms", "2000",
         "--heartbeat-interval-ms", "400", "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "tracehouse sink: the sink stopped: 10 lines in a row were refused" in proc.stderr
    assert "To proceed:" in proc.stderr
    committed = asyncio.run(group_committed(broker.bootstrap, topics.traces, 1, group_of(topics)))
    assert committed.get(0, 0) <= 1  # the good envelope at most; never the CSV one


def test_replay_reinserts_fixed_letters_once_stops_on_errors_and_drops(
    broker: TansuBroker, topics: Topics, store: Store, store_uri: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A sink limited to 64 KiB events dead-letters a 200 KB trace; the limit is raised (a new sink with
    the default) and the letter replayed: stored once, although it is republished twice (replay ran again
    over a duplicate of the letter). A malformed line stops stop-on-error until it is dropped. A message
    refused whole for its mislabelled format is reinserted as NDJSON."""
    monkeypatch.setenv("COLUMNS", "250")  # the table is not folded
    big = make_trace(2, pad=100_000)
    malformed = make_trace(3).replace(b'"state":', b'"state"', 1)
    envelope = encode_envelope([make_trace(1), big, malformed, make_trace(4)])
    mislabelled = encode_envelope([make_trace(5), make_trace(6)])
    traces, dlq = topics.traces, topics.dlq
    common = ["--bootstrap", broker.bootstrap, "--topic-prefix", topics.prefix]

    def cli(*argv: str) -> tuple[int, str, str]:
        code = cli_main(["dlq", *argv, *common])
        out, err = capsys.readouterr()
        return code, out, err

    def json_letters(*argv: str) -> list[dict[str, Any]]:
        code, out, _ = cli("list", "--json", *argv)
        assert code == 0
        return [orjson.loads(line) for line in out.splitlines()]

    async def main() -> None:
        await create_topics(broker.bootstrap, topics, 2)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            await producer.send_and_wait(traces, envelope, key=b"k0", partition=1)
            await producer.send_and_wait(traces, mislabelled, key=b"k1", partition=1, headers=[("th-format", b"jsonl")])
        finally:
            await producer.stop()
        strict = Sink(config(broker, topics, store_uri, max_event_bytes=64 * 1024), store)
        async with running(strict):
            assert await strict.wait_committed({(traces, 1): 1}, timeout_s=30)
        assert count(store, "SELECT count() FROM traces") == 2  # traces 1 and 4

        # Listed: reason, origin, status.
        code, table, _ = await asyncio.to_thread(cli, "list")
        assert code == 0
        assert "oversized event: the line is" in table
        assert f"{traces}[1] @0, line 1" in table
        assert f"{traces}[1] @1, whole message" in table
        assert table.count("pending") == 3
        assert [d["origin"]["line"] for d in await asyncio.to_thread(json_letters, "--reason", "OVERSIZED")] == [1]

        sink = Sink(config(broker, topics, store_uri), store)  # the limit raised to its default
        async with running(sink):
            # stop-on-error: the big trace is reinserted, the malformed line stops the run.
            code, out, err = await asyncio.to_thread(cli, "replay", "--policy", "stop-on-error")
            assert code == 3, err
            assert "read 2 letters: 1 reinserted" in out
            assert f"stopped at dead letter 0:1 (from {traces}[1] @0, line 2): it would be refused again: " in err
            await eventually(lambda: count(store, "SELECT count() FROM traces") == 3, what="the replayed trace")
            # Again: nothing is reinserted twice, it stops at the same letter.
            code, out, err = await asyncio.to_thread(cli, "replay", "--policy", "stop-on-error")
            assert code == 3
            assert "read 1 letters: 0 reinserted" in out
            assert "stopped at dead letter 0:1" in err
            code, out, _ = await asyncio.to_thread(cli, "replay", "--policy", "drop", "--max", "1")
            assert code == 0
            assert "read 1 letters: 0 reinserted, 1 dropped" in out
            assert [d["dlq"]["offset"] for d in await asyncio.to_thread(json_letters, "--pending")] == [2]

            # The sink dead-letters at least once: two more copies of the big trace's letter arrive.
            first = (await read_dlq(broker.bootstrap, dlq))[0]
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            await producer.start()
            try:
                for _ in range(2):
                    await producer.send_and_wait(dlq, first.value, key=first.key, headers=first.headers())
            finally:
                await producer.stop()
            code, out, _ = await asyncio.to_thread(cli, "replay", "--policy", "reinsert")
            assert code == 0
            assert "read 3 letters: 2 reinserted, 0 dropped, 1 duplicates" in out  # the whole message, one copy
            code, out, _ = await asyncio.to_thread(cli, "replay", "--policy", "reinsert")
            assert "read 0 letters" in out

            records = await read_topic(broker.bootstrap, traces, 1)
            assert await sink.wait_committed({(traces, 1): records[-1].offset}, timeout_s=30)

        replayed = [r for r in records if HEADER_REPLAYED_FROM in dict(r.headers)]
        assert [dict(r.headers)[HEADER_REPLAYED_FROM] for r in replayed] == [
            f"{traces}/1/0/1".encode(), f"{traces}/1/1/-1".encode(), f"{traces}/1/0/1".encode(),
        ]  # fmt: skip
        assert [r.value for r in replayed] == [big, mislabelled, big]
        assert [r.key for r in replayed] == [b"session-0", b"k1", b"session-0"]  # the event's key; the envelope's
        assert all(dict(r.headers)["th-format"] == b"ndjson" for r in replayed)
        assert [d["handled"] for d in await asyncio.to_thread(json_letters)] == [True] * 5

    asyncio.run(main())
    stored = {r[0] for r in store.query("SELECT trace_id FROM traces")}
    assert stored == {trace_id(i) for i in (1, 2, 4, 5, 6)}
    # Republished twice, stored once (counted without FINAL).
    assert count(store, f"SELECT count() FROM traces WHERE trace_id = '{trace_id(2)}'") == 1
    assert count(store, f"SELECT count() FROM spans WHERE trace_id = '{trace_id(2)}'") == 3
