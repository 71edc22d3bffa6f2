"""The SDK under faults, on the real (Tansu) broker: a broker that is down when the app starts and comes
back, a burst twice the default buffer (drop and block policies), and a broker replaced by an empty one
(replay of what it acknowledged last). Counts are checked with a real consumer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

import tracehouse
from tracehouse.app.embedded import TansuBroker, ensure_topics, free_port
from tracehouse.schemas import Topics, split_envelope
from tracehouse.schemas import settings as s

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("_sdk_app.py")
THREAD_NAME = "tracehouse-publisher"


@pytest.fixture(autouse=True)
def stop_sdk() -> Iterator[None]:
    yield
    tracehouse.shutdown(timeout=2.0)
    for thread in threading.enumerate():
        if thread.name == THREAD_NAME:
            thread.join(5.0)


async def _consume(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every event line in ``topic``, decoded: read from the start to the end offsets of every partition
    (what the broker acknowledged is there, so no waiting on time)."""
    from aiokafka import TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024
    )
    await consumer.start()
    events: list[dict[str, Any]] = []
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"no topic {topic}"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for record in batch:
                    events.extend(orjson.loads(line) for line in split_envelope(record.value))
    finally:
        await consumer.stop()
    return events


def consume(bootstrap: str, topics: Topics) -> list[dict[str, Any]]:
    """The app's events in the traces topic, without its SDK heartbeats (see ``heartbeats``)."""
    return [e for e in asyncio.run(_consume(bootstrap, topics.traces)) if e["type"] != "sdk_heartbeat"]


def heartbeats(bootstrap: str, topics: Topics) -> list[dict[str, Any]]:
    return [e for e in asyncio.run(_consume(bootstrap, topics.traces)) if e["type"] == "sdk_heartbeat"]


def create_topics(bootstrap: str, topics: Topics) -> None:
    asyncio.run(ensure_topics(bootstrap, topics, partitions=4))


# -- 1. a broker that is down when the app starts, then comes back ------------------------------------


class App:
    """``tests/_sdk_app.py`` as a subprocess: commands on stdin, one JSON answer per line on stdout."""

    def __init__(self, bootstrap: str, prefix: str, calls: int, buffer_size: int, stderr: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), bootstrap, prefix, str(calls), str(buffer_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the app exited early (code {self.proc.wait()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def exit(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("exit\n")
        self.proc.stdin.close()
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_broker_down_at_start_then_back(tmp_path: Path) -> None:
    """Traced calls complete while the broker is down, the buffer keeps its bound and counts what it
    drops, aiokafka's connection errors stay off the app's stderr (one outage line, one recovery line),
    and what was buffered arrives once a broker listens on the port."""
    port, prefix = free_port(), "down."
    calls, buffer_size = 500, 200
    err_path = tmp_path / "app.stderr"
    with err_path.open("wb") as err:
        app = App(f"127.0.0.1:{port}", prefix, calls, buffer_size, err)
        try:
            called = app.read()
            assert called["wrong"] == 0  # every traced call returned its own result
            assert (called["accepted"], called["dropped"], called["buffered"], called["published"]) == (
                buffer_size, calls - buffer_size, buffer_size, 0)  # fmt: skip
            deadline = time.monotonic() + 60
            status = app.ask("status")
            while status["suppressed"] < 3 and time.monotonic() < deadline:  # a few failed attempts
                time.sleep(0.2)
                status = app.ask("status")
            assert status["suppressed"] >= 3, status
            assert status["buffered"] == buffer_size
            with TansuBroker(port=port, log_path=tmp_path / "tansu.log") as broker:
                create_topics(broker.bootstrap, Topics(prefix))
                flushed = app.ask("flush 120")
                assert flushed["flushed"] is True, flushed
                assert (flushed["published"], flushed["failed"], flushed["dropped"], flushed["buffered"]) == (
                    buffer_size, 0, calls - buffer_size, 0)  # fmt: skip
                assert app.exit() == 0
                events = consume(broker.bootstrap, Topics(prefix))
        finally:
            app.kill()
    requests = {e["client_request_id"] for e in events}
    stored = len(requests)
    assert requests == {f"call-{i}" for i in range(buffer_size)}  # the first ones were kept, the rest dropped
    assert flushed["dropped"] + stored == calls
    stderr = err_path.read_text()
    assert "aiokafka" not in stderr, stderr
    assert "Unable connect" not in stderr, stderr
    assert stderr.count("is unreachable") == 1, stderr
    assert stderr.count("is reachable again") == 1, stderr
    assert f"{calls - buffer_size} dropped meanwhile" in stderr, stderr
    assert stderr.count(f"{calls - buffer_size} event(s) were not published before shutdown") == 1, stderr


@pytest.mark.parametrize("start", ["configure", "first call"])
def test_a_script_that_exits_at_once_still_publishes_to_a_broker_named_by_host_name(
    broker: TansuBroker, topics: Topics, start: str
) -> None:
    """The exit flush may be the publisher's first connection. asyncio resolves a host name in a thread
    pool that refuses work once the interpreter exits: the SDK's loop resolves it inline instead."""
    create_topics(broker.bootstrap, topics)
    code = "\n".join([
        "import tracehouse",
        "tracehouse.configure()" if start == "configure" else "",
        "tracehouse.trace(lambda: 1)()",
    ])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEHOUSE_")}
    env.update(TRACEHOUSE_KAFKA_BOOTSTRAP=f"localhost:{broker.port}", TRACEHOUSE_TOPIC_PREFIX=topics.prefix)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(consume(broker.bootstrap, topics)) == 1, done.stderr
    assert "not published" not in done.stderr, done.stderr
    [last] = heartbeats(broker.bootstrap, topics)  # sent at exit, with the final counts
    assert (last["accepted"], last["published"], last.get("dropped", 0)) == (1, 1, 0)


def test_block_policy_never_hangs_on_a_broker_that_is_down(caplog: pytest.LogCaptureFixture) -> None:
    """Under buffer_policy="block" a call waits at most the block timeout; after one wait that timed out
    the others drop at once (counted) instead of each waiting."""
    tracehouse.configure(kafka_bootstrap=f"127.0.0.1:{free_port()}", buffer_size=5, buffer_policy="block",
                         buffer_block_timeout=0.2, linger_ms=1)  # fmt: skip
    for i in range(20):  # each call returns (a hang would fail the test on pytest's timeout)
        tracehouse.set_trace_tag(f"tr-{i:032x}", "k", "v")
    stats = tracehouse.stats()
    assert (stats.accepted, stats.dropped, stats.buffered) == (5, 15, 5)
    assert tracehouse.shutdown(timeout=0.2) is False
    assert "20 event(s) were not published before shutdown (5 still buffered, 15 dropped" in caplog.text


# -- 2. a burst twice the default buffer from one process ------------------------------------------------

BURST = 2 * s.BUFFER_SIZE.default


@tracehouse.trace
def tiny(index: int) -> int:
    return index


def _burst(broker: TansuBroker, topics: Topics, **options: Any) -> tuple[tracehouse.PublisherStats, int]:
    create_topics(broker.bootstrap, topics)
    tracehouse.configure(kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix, **options)
    for i in range(BURST):
        tiny(i)
    assert tracehouse.flush(timeout=600) is True
    stats = tracehouse.stats()
    events = consume(broker.bootstrap, topics)
    stored = len({e["trace_id"] for e in events})
    return stats, stored


def test_burst_with_the_default_policy_counts_every_drop(broker: TansuBroker, topics: Topics) -> None:
    stats, stored = _burst(broker, topics)
    assert stats.accepted + stats.dropped == BURST
    assert stats.failed == 0
    assert stats.published == stored
    assert BURST - stored == stats.dropped


def test_burst_with_the_block_policy_drops_nothing(broker: TansuBroker, topics: Topics) -> None:
    # a generous bound: a busy machine must not turn a wait into a drop here
    stats, stored = _burst(broker, topics, buffer_policy="block", buffer_block_timeout=300)
    assert (stats.accepted, stats.dropped, stats.failed) == (BURST, 0, 0)
    assert stored == BURST


# -- 3. the broker replaced by an empty one ---------------------------------------------------------------


@tracehouse.trace
def turn(session_id: str, index: int) -> int:
    tracehouse.update_current_trace(metadata={"mlflow.trace.session": session_id})
    return index


def test_envelopes_acknowledged_before_a_broker_restart_are_sent_again(
    tmp_path: Path, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    old = TansuBroker(port=port, log_path=tmp_path / "old.log").start()
    try:
        create_topics(old.bootstrap, topics)
        # a window no busy machine can outlast between the first acknowledgement and the restart
        tracehouse.configure(kafka_bootstrap=old.bootstrap, topic_prefix=topics.prefix, linger_ms=1,
                             replay_window=600)  # fmt: skip
        before = []
        for _ in range(2):  # two rounds: the partition's offsets reach 1 on the old broker
            for i in range(20):
                turn("one-session", i)
                before.append(tracehouse.get_last_active_trace_id())
            assert tracehouse.flush(timeout=30) is True
    finally:
        old.stop(timeout=1.0)  # Tansu drains its connections for 5 s on SIGTERM; nothing to wait for here
    with caplog.at_level(logging.WARNING, logger="tracehouse"), \
            TansuBroker(port=port, log_path=tmp_path / "new.log") as new:  # fmt: skip
        create_topics(new.bootstrap, topics)
        after = []
        for i in range(10):
            turn("one-session", i)
            after.append(tracehouse.get_last_active_trace_id())
        assert tracehouse.flush(timeout=120) is True
        stats = tracehouse.stats()
        events = consume(new.bootstrap, topics)
        tracehouse.shutdown(timeout=5.0)  # a broker with a client connected takes 5 s to stop
    assert (stats.published, stats.failed, stats.replayed) == (50, 0, 40)
    assert {e["trace_id"] for e in events} == set(before) | set(after)
    assert caplog.text.count("was replaced by an empty one") == 1


def test_events_sent_while_the_broker_is_down_are_retried_not_failed(
    tmp_path: Path, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery that times out while the broker is away is kept and sent again once one is back."""
    port = free_port()
    caplog.set_level(logging.WARNING, logger="tracehouse")
    old = TansuBroker(port=port, log_path=tmp_path / "old.log").start()
    try:
        create_topics(old.bootstrap, topics)
        tracehouse.configure(kafka_bootstrap=old.bootstrap, topic_prefix=topics.prefix, linger_ms=1,
                             replay_window=600, kafka_options={"request_timeout_ms": 1500})  # fmt: skip
        sent = []
        for i in range(5):
            turn("one-session", i)
            sent.append(tracehouse.get_last_active_trace_id())
        assert tracehouse.flush(timeout=30) is True
    finally:
        old.stop(timeout=1.0)
    for i in range(5):
        turn("one-session", 10 + i)
        sent.append(tracehouse.get_last_active_trace_id())
    deadline = time.monotonic() + 120
    while "is unreachable" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "is unreachable" in caplog.text
    assert tracehouse.stats().failed == 0
    with TansuBroker(port=port, log_path=tmp_path / "new.log") as new:
        create_topics(new.bootstrap, topics)
        assert tracehouse.flush(timeout=120) is True
        stats = tracehouse.stats()
        events = consume(new.bootstrap, topics)
        tracehouse.shutdown(timeout=5.0)
    assert (stats.published, stats.failed) == (10, 0)
    assert {e["trace_id"] for e in events} == set(sent)  # the old broker's last ones were replayed too
    assert caplog.text.count("is unreachable") == 1
    assert caplog.text.count("is reachable again") == 1


def test_no_replay_without_a_window(tmp_path: Path, topics: Topics) -> None:
    port = free_port()
    old = TansuBroker(port=port, log_path=tmp_path / "old.log").start()
    try:
        create_topics(old.bootstrap, topics)
        tracehouse.configure(kafka_bootstrap=old.bootstrap, topic_prefix=topics.prefix, replay_window=0)
        for _ in range(2):
            turn("one-session", 0)
            assert tracehouse.flush(timeout=30) is True
    finally:
        old.stop(timeout=1.0)
    with TansuBroker(port=port, log_path=tmp_path / "new.log") as new:
        create_topics(new.bootstrap, topics)
        turn("one-session", 1)
        assert tracehouse.flush(timeout=120) is True
        assert tracehouse.stats().replayed == 0
        assert len(consume(new.bootstrap, topics)) == 1
        tracehouse.shutdown(timeout=5.0)
