"""The Kafka publisher against the real (Tansu) broker: delivery, partitioning, envelopes, back-pressure,
an unreachable broker, lifecycle and fork safety."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

import tracehouse
from tracehouse.app.embedded import TansuBroker, free_port
from tracehouse.schemas import (
    HEADER_COUNT,
    HEADER_FORMAT,
    AssessmentEvent,
    Event,
    TagSetEvent,
    Topics,
    TraceEvent,
    decode_event,
    split_envelope,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
THREAD_NAME = "tracehouse-publisher"


def publisher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@pytest.fixture(autouse=True)
def stop_sdk() -> Iterator[None]:
    yield
    tracehouse.shutdown(timeout=2.0)
    for thread in publisher_threads():
        thread.join(5.0)
    assert not publisher_threads(), "a publisher thread outlived shutdown()"


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()


def create_topic(broker: TansuBroker, topics: Topics) -> None:
    asyncio.run(_create_topic(broker.bootstrap, topics.traces))


async def _consume(bootstrap: str, topic: str, events: int, wait_s: float) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    seen = 0
    deadline = time.monotonic() + wait_s
    try:
        while seen < events and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for record in batch:
                    if b'"type":"sdk_heartbeat"' in record.value:
                        continue  # the SDK's own counters, not the app's events
                    records.append(record)
                    seen += sum(1 for _ in split_envelope(record.value))
    finally:
        await consumer.stop()
    return records


def consume(broker: TansuBroker, topics: Topics, events: int, timeout: float = 20.0) -> list[Any]:
    return asyncio.run(_consume(broker.bootstrap, topics.traces, events, timeout))


def lines_of(records: list[Any]) -> list[tuple[Any, Event]]:
    out: list[tuple[Any, Event]] = []
    for record in records:
        headers = dict(record.headers)
        lines = list(split_envelope(record.value))
        assert headers[HEADER_FORMAT] == b"ndjson"
        assert int(headers[HEADER_COUNT]) == len(lines)
        out.extend((record, decode_event(line)) for line in lines)
    return out


@tracehouse.trace
def chat(user_id: str, session_id: str | None, message: str) -> str:
    if session_id is not None:
        tracehouse.update_current_trace(
            metadata={"mlflow.trace.user": user_id, "mlflow.trace.session": session_id}
        )
    with tracehouse.start_span("llm", span_type="LLM") as span:
        span.set_attribute(
            "mlflow.chat.tokenUsage", {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
        )
    return message.upper()


def test_traces_reach_kafka_partitioned_by_session(broker: TansuBroker, topics: Topics) -> None:
    create_topic(broker, topics)
    tracehouse.configure(kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix, linger_ms=5)
    sessions = [f"session-{i}" for i in range(6)]
    for i in range(60):
        chat(f"user-{i % 3}", sessions[i % 6], f"message {i}")
    anonymous: list[str] = []
    for i in range(5):
        chat("anon", None, f"no session {i}")
        last = tracehouse.get_last_active_trace_id()
        assert last is not None
        anonymous.append(last)
    tracehouse.set_trace_tag(anonymous[0], "reviewed", "yes")
    tracehouse.log_feedback(anonymous[1], name="thumbs", value=True, session_id="session-0")

    assert tracehouse.flush(timeout=15.0) is True
    stats = tracehouse.stats()
    assert (stats.accepted, stats.published, stats.dropped, stats.failed, stats.buffered) == (67, 67, 0, 0, 0)

    decoded = lines_of(consume(broker, topics, 67))
    assert len(decoded) == 67
    partitioner = DefaultPartitioner()
    parts = list(range(PARTITIONS))
    partitions_of_session: dict[str, set[int]] = {}
    for record, event in decoded:
        if isinstance(event, TraceEvent):
            assert event.metadata["mlflow.trace.tokenUsage"] == (
                '{"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}'
            )
            session = event.metadata.get("mlflow.trace.session")
            key = session or event.trace_id
            if session:
                partitions_of_session.setdefault(session, set()).add(record.partition)
        elif isinstance(event, AssessmentEvent):
            key = "session-0"
            partitions_of_session.setdefault("session-0", set()).add(record.partition)
        else:
            assert isinstance(event, TagSetEvent)
            key = event.trace_id
        assert record.partition == partitioner(key.encode(), parts, parts)
    assert set(partitions_of_session) == set(sessions)
    assert all(len(p) == 1 for p in partitions_of_session.values()), partitions_of_session
    # many events share an envelope: far fewer messages than events
    assert len({(r.partition, r.offset) for r, _ in decoded}) < 20
    for record, _ in decoded:
        first = decode_event(next(iter(split_envelope(record.value))))
        if isinstance(first, TraceEvent):
            expected_key = first.metadata.get("mlflow.trace.session") or first.trace_id
            assert record.key == expected_key.encode()


def test_envelopes_are_split_by_size_and_big_events_travel_alone(broker: TansuBroker, topics: Topics) -> None:
    create_topic(broker, topics)
    tracehouse.configure(
        kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix, max_envelope_bytes=4096, linger_ms=50
    )
    for i in range(30):
        chat("u", "one-session", "x" * 400 + str(i))
    chat("u", "one-session", "y" * 20_000)  # larger than an envelope on its own
    assert tracehouse.flush(timeout=15.0) is True
    assert tracehouse.stats().published == 31
    records = consume(broker, topics, 31)
    decoded = lines_of(records)
    assert len(decoded) == 31
    assert len({r.partition for r in records}) == 1
    assert len(records) >= 4
    for record in records:
        count = int(dict(record.headers)[HEADER_COUNT])
        assert len(record.value) <= 4096 or count == 1
    assert any(len(r.value) > 20_000 for r in records)


def test_unreachable_broker_buffers_drops_and_never_hangs() -> None:
    tracehouse.configure(kafka_bootstrap=f"127.0.0.1:{free_port()}", buffer_size=5, linger_ms=1)
    results = [chat("u", f"s{i}", "m") for i in range(20)]
    assert results == ["M"] * 20
    stats = tracehouse.stats()
    assert (stats.accepted, stats.dropped, stats.buffered, stats.published) == (5, 15, 5, 0)

    started = time.monotonic()
    assert tracehouse.flush(timeout=0.5) is False
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    assert tracehouse.shutdown(timeout=0.3) is False
    assert time.monotonic() - started < 3.0
    assert not publisher_threads()
    stats = tracehouse.stats()
    assert (stats.failed, stats.buffered) == (5, 0)
    chat("u", "s", "after shutdown")  # still works; the event is dropped
    assert tracehouse.stats().dropped == 16


def test_buffered_events_go_out_once_the_broker_is_up(tmp_path: Any) -> None:
    port = free_port()
    tracehouse.configure(kafka_bootstrap=f"127.0.0.1:{port}", topic_prefix="late.")
    for i in range(3):
        chat("u", "s-late", f"m{i}")
    assert tracehouse.flush(timeout=0.2) is False
    with TansuBroker(port=port, log_path=tmp_path / "late.log") as late:
        assert tracehouse.flush(timeout=20.0) is True
        assert tracehouse.stats().published == 3
        assert len(lines_of(consume(late, Topics("late."), 3))) == 3
        tracehouse.shutdown(timeout=2.0)


def test_configure_starts_the_publisher_and_shutdown_stops_it(broker: TansuBroker, topics: Topics) -> None:
    """configure() pays the publisher's start-up (imports, thread, loop), so that no traced call does."""
    tracehouse.configure(kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix)
    assert len(publisher_threads()) == 1
    assert tracehouse.flush(timeout=1.0) is True  # nothing to do
    chat("u", "s", "m")
    assert len(publisher_threads()) == 1
    assert tracehouse.shutdown(timeout=10.0) is True
    assert not publisher_threads()
    assert tracehouse.stats().published == 1
    tracehouse.configure(kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix, enabled=False)
    tracehouse.configure(kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix, exporter=lambda e: None)
    assert not publisher_threads()  # nothing to start when nothing goes to Kafka


def test_reconfiguring_flushes_the_old_publisher(broker: TansuBroker, topics: Topics) -> None:
    create_topic(broker, topics)
    tracehouse.configure(kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix, linger_ms=20)
    for i in range(3):
        chat("u", "s", f"m{i}")
    tracehouse.configure(kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix + "other.")
    assert tracehouse.stats() == tracehouse.PublisherStats()  # a fresh publisher
    assert len(lines_of(consume(broker, topics, 3, timeout=10.0))) == 3


def test_a_forked_child_gets_a_fresh_publisher() -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    tracehouse.configure(kafka_bootstrap=f"127.0.0.1:{free_port()}", buffer_size=10)
    chat("u", "s", "parent")
    assert tracehouse.stats().accepted == 1
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 0
        try:
            if tracehouse.stats().accepted != 0:
                code = 2
            chat("u", "s", "child")
            if tracehouse.stats().accepted != 1:
                code = 3
            tracehouse.shutdown(timeout=0.2)
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tracehouse.stats().accepted == 1
    tracehouse.shutdown(timeout=0.2)
