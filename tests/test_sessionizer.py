"""The faust sessionizer against the real Tansu broker: sessions.v1 equals a brute-force computation."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from _processes import sessionizer_command, spawn, stop

from tracehouse.app.embedded import TansuBroker, ensure_topics
from tracehouse.processors.sessions import Sessionizer, SessionizerConfig, run_sessionizer
from tracehouse.schemas import (
    SessionRecord,
    TagSetEvent,
    Topics,
    TraceEvent,
    encode_envelope,
    encode_event,
    envelope_headers,
    split_envelope,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
GAP_MS = 30 * 60 * 1000
BASE_MS = 1_795_000_000_000
_record_decoder = msgspec.json.Decoder(SessionRecord)


def partition_of(session_id: str) -> int:
    return zlib.crc32(session_id.encode()) % PARTITIONS


def trace(
    trace_id: str, ts: int, dur: int, session: str | None, user: str, *, error: bool = False, turn: int = 0
) -> TraceEvent:
    metadata = {"mlflow.trace.user": user}
    if session is not None:
        metadata["mlflow.trace.session"] = session
    state: Literal["OK", "ERROR"] = "ERROR" if error else "OK"
    return TraceEvent(
        trace_id=trace_id, timestamp_ms=ts, execution_time_ms=dur, state=state,
        request_preview=f"question {turn} of {session}", response_preview=f"answer {turn} ({trace_id})",
        metadata=metadata,
    )  # fmt: skip


@dataclass
class Workload:
    """Envelopes per partition (in publishing order) and the distinct traces of every session."""

    envelopes: list[tuple[int, list[bytes]]] = field(default_factory=list)
    sessions: dict[str, list[TraceEvent]] = field(default_factory=dict)
    watermark: dict[int, int] = field(default_factory=dict)

    @property
    def traces(self) -> int:
        return sum(len(lines) for _, lines in self.envelopes)


def generate(sessions: int = 300, users: int = 30, seed: int = 7, per_envelope: int = 40) -> Workload:
    """Sessions of a few users spread over ~10 h (some close, the latest stay open), 2 % duplicate
    traces, turns shuffled within envelopes, plus a tag, a sessionless trace and a broken line."""
    rng = random.Random(seed)
    w = Workload()
    events: list[TraceEvent] = []
    n = 0
    for s in range(sessions):
        sid, user = f"session-{s:04d}", f"user-{rng.randrange(users)}"
        t = BASE_MS + rng.randrange(10 * 3_600_000)
        for turn in range(rng.randint(1, 8)):
            n += 1
            dur = rng.randint(20, 4_000)
            ev = trace(f"tr-{n:032x}", t, dur, sid, user, error=rng.random() < 0.1, turn=turn)
            events.append(ev)
            w.sessions.setdefault(sid, []).append(ev)
            t += dur + rng.randint(1_000, 5 * 60_000)
    events.sort(key=lambda e: e.timestamp_ms)
    by_partition: dict[int, list[bytes]] = {}
    for ev in events:
        by_partition.setdefault(partition_of(ev.metadata["mlflow.trace.session"]), []).append(encode_event(ev))
        p = partition_of(ev.metadata["mlflow.trace.session"])
        w.watermark[p] = max(w.watermark.get(p, 0), ev.timestamp_ms)
    extra = [
        encode_event(TagSetEvent(trace_id="tr-" + "0" * 31 + "1", key="k", value="v", timestamp_ns=BASE_MS * 10**6)),
        encode_event(trace("tr-" + "f" * 32, BASE_MS, 10, None, "user-x")),
        b'{"type":"trace","trace_id":',
    ]
    by_partition[0][5:5] = extra
    for p, lines in sorted(by_partition.items()):
        trace_lines = [ln for ln in lines if ln not in extra]
        dups = rng.sample(range(len(trace_lines)), max(1, len(trace_lines) // 50))
        for i in dups:  # a duplicate lands a little later, possibly in a later envelope
            lines.insert(min(len(lines), lines.index(trace_lines[i]) + rng.randint(1, 60)), trace_lines[i])
        for i in range(0, len(lines), per_envelope):
            chunk = lines[i : i + per_envelope]
            rng.shuffle(chunk)  # out-of-order turns within an envelope
            w.envelopes.append((p, chunk))
    rng.shuffle(w.envelopes)  # partitions interleave; order within a partition is kept below
    w.envelopes.sort(key=lambda pe: pe[0])
    return w


def expected_record(sid: str, traces: list[TraceEvent], watermark_ms: int) -> dict[str, Any]:
    """Brute force, independent of the fold: what the newest record of ``sid`` must say."""
    first = min(traces, key=lambda t: (t.timestamp_ms, t.trace_id))
    last = max(traces, key=lambda t: (t.timestamp_ms, t.trace_id))
    last_end = max(t.timestamp_ms + t.execution_time_ms for t in traces)
    return {
        "session_id": sid,
        "turns": len(traces),
        "first_ms": first.timestamp_ms,
        "last_ms": last.timestamp_ms,
        "last_end_ms": last_end,
        "total_duration_ms": sum(t.execution_time_ms for t in traces),
        "error_turns": sum(t.state == "ERROR" for t in traces),
        "first_request_preview": first.request_preview,
        "last_response_preview": last.response_preview,
        "user_ids": sorted({t.metadata["mlflow.trace.user"] for t in traces}),
        "status": "closed" if watermark_ms - last_end >= GAP_MS else "open",
    }


def observed(record: SessionRecord) -> dict[str, Any]:
    keys = ("session_id", "turns", "first_ms", "last_ms", "last_end_ms", "total_duration_ms", "error_turns",
            "first_request_preview", "last_response_preview", "user_ids", "status")  # fmt: skip
    return {k: getattr(record, k) for k in keys}


async def publish(bootstrap: str, topic: str, envelopes: list[tuple[int, list[bytes]]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=16 << 20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, encode_envelope(lines), partition=p, headers=envelope_headers(len(lines)))
            for p, lines in envelopes
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class SessionsReader:
    """Reads ``sessions.v1`` from the start, keeping the newest record of each session."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from aiokafka import AIOKafkaConsumer

        self.latest: dict[str, SessionRecord] = {}
        self.history: dict[str, list[SessionRecord]] = {}
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
            group_id=None,
        )  # fmt: skip

    async def __aenter__(self) -> SessionsReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=200)
        for messages in batches.values():
            for message in messages:
                for line in split_envelope(message.value):
                    rec = _record_decoder.decode(line)
                    self.history.setdefault(rec.session_id, []).append(rec)
                    cur = self.latest.get(rec.session_id)
                    if cur is None or rec.version > cur.version:
                        self.latest[rec.session_id] = rec

    async def until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await self.poll()


def config_for(broker: TansuBroker, topics: Topics, tmp_path: Path, **overrides: Any) -> SessionizerConfig:
    return SessionizerConfig.resolve(
        bootstrap=broker.bootstrap, topic_prefix=topics.prefix, app_id=f"sessionizer-{uuid.uuid4().hex[:8]}",
        partitions=PARTITIONS, rollup_partitions=PARTITIONS, flush_interval_ms=200, datadir=str(tmp_path / "faust"),
        env={}, **overrides,
    )  # fmt: skip


async def with_sessionizer(config: SessionizerConfig, body: Callable[[Sessionizer], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    worker = Sessionizer(config)
    task = asyncio.create_task(run_sessionizer(config, stop, sessionizer=worker))
    try:
        await body(worker)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_config_resolution() -> None:
    env = {"TRACEHOUSE_KAFKA_BOOTSTRAP": "env:1", "TRACEHOUSE_TOPIC_PREFIX": "p."}
    assert SessionizerConfig.resolve(env=env).bootstrap == "env:1"
    assert SessionizerConfig.resolve(bootstrap="x:2", env=env).bootstrap == "x:2"
    assert SessionizerConfig.resolve(env={}).topics.sessions == "tracehouse.sessions.v1"
    assert SessionizerConfig.resolve(env=env).app_id == "tracehouse-sessionizer"
    with pytest.raises(ValueError, match="partitions"):
        SessionizerConfig(partitions=0)


def test_sessions_equal_brute_force(broker: TansuBroker, topics: Topics, tmp_path: Path) -> None:
    work = generate()
    expected = {sid: expected_record(sid, evs, work.watermark[partition_of(sid)]) for sid, evs in work.sessions.items()}
    assert {e["status"] for e in expected.values()} == {"open", "closed"}
    config = config_for(broker, topics, tmp_path)

    async def scenario() -> None:
        await ensure_topics(broker.bootstrap, topics, partitions=PARTITIONS)
        await publish(broker.bootstrap, topics.traces, work.envelopes)

        async def body(worker: Sessionizer) -> None:
            async with SessionsReader(broker.bootstrap, topics.sessions) as reader:
                await reader.until(
                    lambda: {sid: observed(r) for sid, r in reader.latest.items()} == expected, 60, "all sessions"
                )
            assert worker.stats.sessionless == 0  # the session-less trace has a user: it counts for rollups
            assert worker.stats.undecodable == 1
            assert worker.stats.new_traces == sum(len(v) for v in work.sessions.values()) + 1

        await with_sessionizer(config, body)

    asyncio.run(scenario())


def test_late_turn_reopens_a_closed_session(broker: TansuBroker, topics: Topics, tmp_path: Path) -> None:
    late, other = (
        "session-late",
        next(f"s-{i}" for i in range(100) if partition_of(f"s-{i}") == partition_of("session-late")),
    )
    p = partition_of(late)
    config = config_for(broker, topics, tmp_path)

    async def scenario() -> None:
        await ensure_topics(broker.bootstrap, topics, partitions=PARTITIONS)
        first = [encode_event(trace("tr-" + "a" * 31 + "1", BASE_MS, 100, late, "u1", turn=0))]
        second = [encode_event(trace("tr-" + "b" * 31 + "1", BASE_MS + GAP_MS + 60_000, 100, other, "u2"))]
        await publish(broker.bootstrap, topics.traces, [(p, first), (p, second)])

        async def body(worker: Sessionizer) -> None:
            async with SessionsReader(broker.bootstrap, topics.sessions) as reader:
                await reader.until(
                    lambda: late in reader.latest and reader.latest[late].status == "closed", 30, "close"
                )
                closed = reader.latest[late]
                assert closed.turns == 1
                late_2 = "tr-" + "a" * 31 + "2"
                third = [encode_event(trace(late_2, BASE_MS + GAP_MS + 120_000, 50, late, "u3", turn=1))]
                await publish(broker.bootstrap, topics.traces, [(p, third)])
                await reader.until(lambda: reader.latest[late].turns == 2, 30, "reopen")
                reopened = reader.latest[late]
                assert reopened.status == "open"
                assert reopened.version > closed.version
                assert reopened.user_ids == ["u1", "u3"]
                assert reopened.last_response_preview == f"answer 1 (tr-{'a' * 31}2)"
                assert reader.latest[other].status == "open"

        await with_sessionizer(config, body)

    asyncio.run(scenario())


def test_sigkill_mid_stream_then_restart(broker: TansuBroker, topics: Topics, tmp_path: Path) -> None:
    """A worker subprocess killed mid-stream: the restarted one restores its state and replays, and the
    newest records still equal the brute force."""
    work = generate(sessions=600, users=40, seed=11, per_envelope=4)
    expected = {sid: expected_record(sid, evs, work.watermark[partition_of(sid)]) for sid, evs in work.sessions.items()}
    app_id = f"sessionizer-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"

    def worker() -> subprocess.Popen[bytes]:
        return spawn(sessionizer_command(broker.bootstrap, topics.prefix, app_id, PARTITIONS, tmp_path / "faust"), log)

    async def scenario() -> None:
        await ensure_topics(broker.bootstrap, topics, partitions=PARTITIONS)
        first, rest = [], []  # the kill lands in the middle of every partition
        for p in range(PARTITIONS):
            envs = [e for e in work.envelopes if e[0] == p]
            first += envs[: len(envs) // 2]
            rest += envs[len(envs) // 2 :]
        await publish(broker.bootstrap, topics.traces, first)
        proc = worker()
        try:
            async with SessionsReader(broker.bootstrap, topics.sessions) as reader:
                await reader.until(lambda: len(reader.latest) > 20, 60, "first records")
                await publish(broker.bootstrap, topics.traces, rest)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                killed_mid_stream = {sid: observed(r) for sid, r in reader.latest.items()} != expected
                proc = worker()
                await reader.until(
                    lambda: {sid: observed(r) for sid, r in reader.latest.items()} == expected, 70, "all sessions"
                )
            assert killed_mid_stream
            assert "restored" in log.read_text()  # the second worker loaded its state from the changelog
        finally:
            stop(proc, 20)

    try:
        asyncio.run(scenario())
    except AssertionError:
        print(log.read_text()[-5000:])
        raise


def test_sigterm_flushes_what_was_folded_and_commits(broker: TansuBroker, topics: Topics, tmp_path: Path) -> None:
    """The command-line worker's graceful stop: its timer never fires (10 min interval), so every record
    on sessions.v1 comes from the flush SIGTERM makes, and the offsets it commits cover every event."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    work = generate(sessions=120, users=12, seed=5, per_envelope=4)
    expected = {sid: expected_record(sid, evs, work.watermark[partition_of(sid)]) for sid, evs in work.sessions.items()}
    app_id = f"sessionizer-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    cmd = sessionizer_command(broker.bootstrap, topics.prefix, app_id, PARTITIONS, tmp_path / "faust", 600_000)

    async def committed() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=app_id, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topics.traces, p) for p in range(PARTITIONS)]
            return {tp.partition: (await consumer.committed(tp)) or 0 for tp in tps}
        finally:
            await consumer.stop()

    async def scenario() -> None:
        await ensure_topics(broker.bootstrap, topics, partitions=PARTITIONS)
        await publish(broker.bootstrap, topics.traces, work.envelopes)
        proc = spawn(cmd, log)
        try:
            # Consuming 120 sessions takes well under a second once the worker is up; it has no other
            # way to say it folded them (nothing is emitted before a flush), so give it ample time.
            await asyncio.sleep(20)
            async with SessionsReader(broker.bootstrap, topics.sessions) as reader:
                await reader.poll()
                assert reader.latest == {}, "the timer flushed: the test would not test the stop"
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 60) == 0
                await reader.until(
                    lambda: {sid: observed(r) for sid, r in reader.latest.items()} == expected, 30, "all sessions"
                )
            per_partition = {p: sum(1 for q, _ in work.envelopes if q == p) for p in range(PARTITIONS)}
            assert await committed() == per_partition
        finally:
            stop(proc, 0, signal.SIGKILL)

    try:
        asyncio.run(scenario())
    except AssertionError:
        print(log.read_text()[-5000:])
        raise


def test_hole_reader_reads_exactly_the_range_faust_will_not_deliver(broker: TansuBroker, topics: Topics) -> None:
    """What a sessionizer folds when faust restored an older state than was committed: exactly the
    envelopes between, in order; a range past the end is refused, not guessed."""
    from tracehouse.processors.sessions._holes import HoleReader

    async def main() -> None:
        await ensure_topics(broker.bootstrap, topics, partitions=2)
        await publish(broker.bootstrap, topics.traces, [(1, [f'{{"n":{i}}}'.encode()]) for i in range(10)])
        reader = HoleReader(broker.bootstrap)
        try:
            got = await reader.read(topics.traces, 1, 3, 7)
            assert got is not None
            assert [o for o, _ in got] == [3, 4, 5, 6]
            assert [v for _, v in got] == [f'{{"n":{i}}}'.encode() for i in range(3, 7)]
            assert await reader.read(topics.traces, 1, 8, 12, timeout_s=2) is None
        finally:
            await reader.close()

    asyncio.run(main())


def test_hole_reader_returns_what_a_range_with_an_offset_gap_holds(broker: TansuBroker, topics: Topics) -> None:
    """Kafka offsets can skip (the soak met it on Tansu after a broker generation change): a read that
    got to the end of its range returns the records there, gaps included, instead of waiting for
    offsets that will never exist (the worker then gave up after 60 s and skipped real envelopes)."""
    from aiokafka import AIOKafkaProducer, TopicPartition
    from aiokafka.protocol.produce import ProduceRequest
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    from tracehouse.processors.sessions._holes import HoleReader

    async def main() -> None:
        await ensure_topics(broker.bootstrap, topics, partitions=1)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topics.traces, b"first", partition=0)
            # One batch whose records sit at offset deltas 0 and 5: offsets 1 and 6, nothing at 2-5.
            builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
            builder.append(0, None, None, b"a", [])
            builder.append(5, None, None, b"b", [])
            node = producer.client.cluster.leader_for_partition(TopicPartition(topics.traces, 0))
            request = ProduceRequest(required_acks=-1, timeout=5000, transactional_id=None,
                                     topics=[(topics.traces, [(0, bytes(builder.build()))])])  # fmt: skip
            await producer.client.send(node, request)
            await producer.send_and_wait(topics.traces, b"last", partition=0)
        finally:
            await producer.stop()
        reader = HoleReader(broker.bootstrap)
        try:
            assert await reader.read(topics.traces, 0, 1, 7) == [(1, b"a"), (6, b"b")]
            assert await reader.read(topics.traces, 0, 2, 6) == []  # the gap alone
            assert await reader.read(topics.traces, 0, 0, 8) == [(0, b"first"), (1, b"a"), (6, b"b"), (7, b"last")]
            assert await reader.read(topics.traces, 0, 8, 12, timeout_s=2) is None  # past the end
        finally:
            await reader.close()

    asyncio.run(main())
