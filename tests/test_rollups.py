"""Sessions and per-user rollups end to end on the real Tansu broker and real chDB: traces.v1 ->
sessionizer (faust) -> sessions.v1 + user-rollups.v1 -> sink -> ClickHouse, compared with ground truth
computed here from the generated events. Also after SIGKILLs of the sessionizer and of the sink, and
with two sessionizer processes sharing the partitions (one of them killed)."""

from __future__ import annotations

import asyncio
import datetime
import random
import signal
import subprocess
import sys
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from _processes import sessionizer_command, spawn, stop
from test_sessionizer import expected_record
from test_sink_kafka import FAST, eventually, group_committed

from tracehouse.app.embedded import TansuBroker, ensure_topics
from tracehouse.processors import (
    Ledger,
    Rejection,
    Sink,
    SinkConfig,
    batch_token,
    epoch_scope,
    read_epoch,
    validate_line,
)
from tracehouse.processors.sessions import Sessionizer, SessionizerConfig, quantile, run_sessionizer
from tracehouse.query import TraceReader, get_user, list_users, user_summary
from tracehouse.schemas import Topics, TraceEvent, UserTraceFact, encode_envelope, encode_event, envelope_headers
from tracehouse.storage import RowBatch, Store, begin_epoch, migrate, write_batch

pytestmark = pytest.mark.integration

PARTITIONS = 4
GAP_MS = 30 * 60 * 1000
BASE_MS = 1_795_000_000_000
DAY_MS = 86_400_000


def partition_of(key: str) -> int:
    return zlib.crc32(key.encode()) % PARTITIONS


@dataclass
class Workload:
    envelopes: list[tuple[int, list[bytes]]] = field(default_factory=list)
    traces: dict[str, TraceEvent] = field(default_factory=dict)  # distinct, by trace id
    watermark: dict[int, int] = field(default_factory=dict)

    def sessions(self) -> dict[str, list[TraceEvent]]:
        out: dict[str, list[TraceEvent]] = {}
        for t in self.traces.values():
            sid = t.metadata.get("mlflow.trace.session")
            if sid:
                out.setdefault(sid, []).append(t)
        return out


def generate(users: int = 1500, sessions: int = 3000, loose: int = 800, seed: int = 5, per: int = 50) -> Workload:
    """Sessions of 1-8 turns spread over three UTC days, traces of users without a session, token
    usage on most, 10 % errors, 3 % duplicate events (a little later, maybe in a later envelope), turns
    shuffled within envelopes."""
    rng = random.Random(seed)
    w = Workload()
    events: list[TraceEvent] = []
    n = 0

    def make(ts: int, user: str, session: str | None) -> TraceEvent:
        nonlocal n
        n += 1
        meta = {"mlflow.trace.user": user}
        if session:
            meta["mlflow.trace.session"] = session
        if rng.random() < 0.8:
            i, o = rng.randint(5, 900), rng.randint(1, 400)
            meta["mlflow.trace.tokenUsage"] = orjson.dumps(
                {"input_tokens": i, "output_tokens": o, "total_tokens": i + o}
            ).decode()
        state: Literal["OK", "ERROR"] = "ERROR" if rng.random() < 0.1 else "OK"
        return TraceEvent(
            trace_id=f"tr-{rng.getrandbits(128):032x}", timestamp_ms=ts, execution_time_ms=rng.randint(5, 6000),
            state=state, request_preview=f"q{n}", response_preview=f"a{n}", metadata=meta,
        )  # fmt: skip

    for s in range(sessions):
        user, sid = f"user-{rng.randrange(users):05d}", f"session-{s:05d}"
        t = BASE_MS + rng.randrange(3 * DAY_MS)
        for _ in range(rng.randint(1, 8)):
            ev = make(t, user, sid)
            events.append(ev)
            t += ev.execution_time_ms + rng.randint(1_000, 10 * 60_000)
    for _ in range(loose):
        events.append(make(BASE_MS + rng.randrange(3 * DAY_MS), f"user-{rng.randrange(users):05d}", None))
    events.sort(key=lambda e: e.timestamp_ms)
    by_partition: dict[int, list[bytes]] = {}
    for ev in events:
        w.traces[ev.trace_id] = ev
        key = ev.metadata.get("mlflow.trace.session") or ev.metadata["mlflow.trace.user"]
        p = partition_of(key)
        by_partition.setdefault(p, []).append(encode_event(ev))
        w.watermark[p] = max(w.watermark.get(p, 0), ev.timestamp_ms)
    for p, lines in sorted(by_partition.items()):
        originals = list(lines)
        for line in rng.sample(originals, len(originals) * 3 // 100):
            lines.insert(min(len(lines), lines.index(line) + rng.randint(1, 80)), line)
        for i in range(0, len(lines), per):
            chunk = lines[i : i + per]
            rng.shuffle(chunk)
            w.envelopes.append((p, chunk))
    return w


# ------------------------------------------------------------------------------------ ground truth


def truth_rollups(w: Workload) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    """Brute force: per user overall, and per (user, UTC day)."""
    groups: dict[tuple[str, str | None], list[TraceEvent]] = {}
    for t in w.traces.values():
        user = t.metadata["mlflow.trace.user"]
        day = (datetime.date(1970, 1, 1) + datetime.timedelta(days=t.timestamp_ms // DAY_MS)).isoformat()
        groups.setdefault((user, None), []).append(t)
        groups.setdefault((user, day), []).append(t)

    def summary(ts: list[TraceEvent]) -> dict[str, Any]:
        durations = sorted(t.execution_time_ms for t in ts)
        tokens = [orjson.loads(t.metadata.get("mlflow.trace.tokenUsage", "{}")) for t in ts]
        errors = sum(t.state == "ERROR" for t in ts)
        return {
            "interactions": len(ts),
            "unique_sessions": len({t.metadata.get("mlflow.trace.session") for t in ts} - {None}),
            "avg_response_time_ms": sum(durations) / len(ts),
            "p50_response_time_ms": quantile(durations, 0.5),
            "p95_response_time_ms": quantile(durations, 0.95),
            "error_count": errors,
            "error_rate": errors / len(ts),
            "first_seen_ms": min(t.timestamp_ms for t in ts),
            "last_seen_ms": max(t.timestamp_ms for t in ts),
            "input_tokens": sum(u.get("input_tokens", 0) for u in tokens),
            "output_tokens": sum(u.get("output_tokens", 0) for u in tokens),
            "total_tokens": sum(u.get("total_tokens", 0) for u in tokens),
        }

    overall = {u: summary(ts) for (u, d), ts in groups.items() if d is None}
    daily = {(u, d): summary(ts) for (u, d), ts in groups.items() if d is not None}
    return overall, daily


def assert_rollup(got: Any, want: dict[str, Any], what: str) -> None:
    for key, value in want.items():
        actual = getattr(got, key)
        if isinstance(value, float):
            assert actual == pytest.approx(value, rel=1e-9, abs=1e-9), f"{what}: {key}"
        else:
            assert actual == value, f"{what}: {key}"


def check_store(store: Store, w: Workload) -> None:
    """Sessions, rollups (overall, paged and daily) and the analysis equal ground truth."""
    sessions = w.sessions()
    want_sessions = {
        sid: expected_record(sid, evs, w.watermark[partition_of(sid)]) for sid, evs in sessions.items()
    }
    reader = TraceReader(store)
    got_sessions: dict[str, Any] = {}
    token = None
    while True:
        page = reader.list_sessions(max_results=500, page_token=token)
        for s in page.sessions:
            assert s.session_id not in got_sessions
            got_sessions[s.session_id] = s
        token = page.next_page_token
        if not token:
            break
    assert set(got_sessions) == set(want_sessions)
    for sid, want in want_sessions.items():
        got = got_sessions[sid]
        observed = {k: getattr(got, k) for k in want if k != "user_ids"} | {"user_ids": list(got.user_ids)}
        assert observed == want, sid
    evs = sessions
    assert sum(s.total_tokens for s in got_sessions.values()) == sum(
        orjson.loads(t.metadata.get("mlflow.trace.tokenUsage", "{}")).get("total_tokens", 0)
        for ts in evs.values() for t in ts
    )  # fmt: skip

    overall, daily = truth_rollups(w)
    seen: list[str] = []
    token = None
    while True:  # every user exactly once, in order, ordered by a float column
        users = list_users(store, order_by=["error_rate DESC"], max_results=337, page_token=token)
        for u in users.users:
            assert_rollup(u, overall[u.user_id], u.user_id)
            seen.append(u.user_id)
        token = users.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(overall)
    rates = [(-overall[u]["error_rate"], u) for u in seen]
    assert rates == sorted(rates)

    for user in random.Random(1).sample(sorted(overall), 40):
        detail = get_user(store, user)
        assert detail.summary is not None
        assert_rollup(detail.summary, overall[user], user)
        assert [d.day for d in detail.days] == sorted(d for (u, d) in daily if u == user)
        for day in detail.days:
            assert day.day is not None
            assert_rollup(day, daily[(user, day.day)], f"{user} {day.day}")
        from_rollups = user_summary(store, user, source="rollups")
        from_traces = user_summary(store, user, source="traces")
        assert from_rollups.to_dict() == pytest.approx(from_traces.to_dict()), user


# ------------------------------------------------------------------------------------ plumbing


async def publish(bootstrap: str, topic: str, envelopes: list[tuple[int, list[bytes]]]) -> dict[int, int]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=16 << 20)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        futures = [
            await producer.send(topic, encode_envelope(lines), partition=p, headers=envelope_headers(len(lines)))
            for p, lines in envelopes
        ]
        for md in await asyncio.gather(*futures):
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    finally:
        await producer.stop()
    return ends


async def topic_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """Last offset + 1 of every partition, by reading the topic (Tansu's ListOffsets is not exact)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    ends: dict[int, int] = {}
    try:
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=300)
            idle = 0 if batch else idle + 1
            for tp, messages in batch.items():
                ends[tp.partition] = max(ends.get(tp.partition, 0), messages[-1].offset + 1)
    finally:
        await consumer.stop()
    return ends


async def settled(bootstrap: str, topics: Topics, sessionizer_group: str, sink_group: str,
                  trace_ends: dict[int, int], timeout_s: float) -> None:  # fmt: skip
    """Wait until the sessionizer consumed every trace and the sink stored everything on all three topics."""

    async def sessionizer_done() -> bool:
        return await group_committed(bootstrap, topics.traces, PARTITIONS, sessionizer_group) == trace_ends

    await eventually(sessionizer_done, timeout_s, "the sessionizer to consume every trace")
    await asyncio.sleep(1.0)  # a last flush of closes
    for topic in (topics.traces, topics.sessions, topics.user_rollups):
        ends = trace_ends if topic == topics.traces else await topic_ends(bootstrap, topic)

        async def stored(topic: str = topic, ends: dict[int, int] = ends) -> bool:
            return await group_committed(bootstrap, topic, PARTITIONS, sink_group) == ends

        await eventually(stored, timeout_s, f"the sink to store {topic}")


def sink_config(broker: TansuBroker, topics: Topics, store_uri: str, group: str) -> SinkConfig:
    return SinkConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, store_uri=store_uri, group_id=group,
                      **FAST)  # fmt: skip


async def publish_first_half(broker: TansuBroker, topics: Topics, w: Workload
                             ) -> tuple[dict[int, int], list[tuple[int, list[bytes]]]]:  # fmt: skip
    """Create the topics and publish the first half of ``w``; returns the end offsets and the rest."""
    await ensure_topics(broker.bootstrap, topics, partitions=PARTITIONS)
    first, rest = halves(w)
    return await publish(broker.bootstrap, topics.traces, first), rest


def spawn_sessionizer(broker: TansuBroker, topics: Topics, app_id: str, tmp_path: Path, log: Path
                      ) -> subprocess.Popen[bytes]:  # fmt: skip
    datadir = tmp_path / f"faust-{uuid.uuid4().hex[:6]}"
    return spawn(sessionizer_command(broker.bootstrap, topics.prefix, app_id, PARTITIONS, datadir), log)


def spawn_sink(broker: TansuBroker, topics: Topics, store_uri: str, group: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tracehouse.processors", "sink", "--bootstrap", broker.bootstrap,
           "--topic-prefix", topics.prefix, "--store", store_uri, "--group", group, "--migrate",
           "--max-batch-age-ms", "100", "--max-batch-rows", "3000", "--poll-timeout-ms", "100",
           "--session-timeout-ms", "2000", "--heartbeat-interval-ms", "400"]  # fmt: skip
    return spawn(cmd, log)


def halves(w: Workload) -> tuple[list[tuple[int, list[bytes]]], list[tuple[int, list[bytes]]]]:
    first: list[tuple[int, list[bytes]]] = []
    rest: list[tuple[int, list[bytes]]] = []
    for p in range(PARTITIONS):
        envs = [e for e in w.envelopes if e[0] == p]
        first += envs[: len(envs) * 2 // 5]
        rest += envs[len(envs) * 2 // 5 :]
    return first, rest


# ------------------------------------------------------------------------------------ tests


def test_sessions_and_rollups_equal_ground_truth(broker: TansuBroker, topics: Topics, tmp_path: Path) -> None:
    """Thousands of users and sessions through the sessionizer and the sink, in one process."""
    w = generate()
    assert len(w.sessions()) == 3000
    assert len({t.metadata["mlflow.trace.user"] for t in w.traces.values()}) > 1000
    store_uri = f"chdb://{tmp_path / 'chdb'}"
    store = Store(store_uri)
    migrate(store)
    app_id = f"sessionizer-{uuid.uuid4().hex[:8]}"
    group = f"sink-{uuid.uuid4().hex[:8]}"
    s_config = SessionizerConfig.resolve(
        bootstrap=broker.bootstrap, topic_prefix=topics.prefix, app_id=app_id, partitions=PARTITIONS,
        rollup_partitions=PARTITIONS, flush_interval_ms=200, datadir=str(tmp_path / "faust"), env={},
    )  # fmt: skip

    async def scenario() -> Sessionizer:
        await ensure_topics(broker.bootstrap, topics, partitions=PARTITIONS)
        ends = await publish(broker.bootstrap, topics.traces, w.envelopes)
        sink = Sink(sink_config(broker, topics, store_uri, group), store=store)
        sink_task = asyncio.create_task(sink.run())
        stop_event = asyncio.Event()
        worker = Sessionizer(s_config)
        worker_task = asyncio.create_task(run_sessionizer(s_config, stop_event, sessionizer=worker))
        try:
            await settled(broker.bootstrap, topics, app_id, group, ends, 120)
        finally:
            stop_event.set()
            await asyncio.wait_for(worker_task, 30)
            await sink.stop()
            await sink_task
        return worker

    try:
        worker = asyncio.run(scenario())
        stats = worker.stats
        assert stats.new_traces == len(w.traces)
        assert stats.facts_emitted == len(w.traces)  # every trace has a user: one fact each
        check_store(store, w)
    finally:
        store.close()


def test_sigkilled_sessionizer_and_sink_still_equal_ground_truth(
    broker: TansuBroker, topics: Topics, tmp_path: Path
) -> None:
    """The sessionizer is SIGKILLed mid-stream and restarted (it replays and re-emits facts), then the
    sink is SIGKILLed and restarted (it replays its batches): sessions and rollups stay exact."""
    w = generate(users=1000, sessions=2000, loose=500, seed=9, per=20)
    store_uri = f"chdb://{tmp_path / 'chdb'}"
    app_id, group = f"sessionizer-{uuid.uuid4().hex[:8]}", f"sink-{uuid.uuid4().hex[:8]}"
    logs = [tmp_path / "sessionizer.log", tmp_path / "sink.log"]

    async def scenario() -> None:
        ends, rest = await publish_first_half(broker, topics, w)
        worker = spawn_sessionizer(broker, topics, app_id, tmp_path, logs[0])
        sink = spawn_sink(broker, topics, store_uri, group, logs[1])
        procs = [worker, sink]
        try:

            async def rollups_stored() -> bool:
                done = await group_committed(broker.bootstrap, topics.user_rollups, PARTITIONS, group)
                return sum(done.values()) > 5

            await eventually(rollups_stored, 60, "first rollup batches stored")
            rest_ends = asyncio.create_task(publish(broker.bootstrap, topics.traces, rest))
            await asyncio.sleep(0.3)
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            procs.append(worker := spawn_sessionizer(broker, topics, app_id, tmp_path, logs[0]))
            more = await rest_ends
            ends.update({p: max(ends.get(p, 0), e) for p, e in more.items()})
            await asyncio.sleep(1.5)
            sink.send_signal(signal.SIGKILL)
            sink.wait(10)
            procs.append(sink := spawn_sink(broker, topics, store_uri, group, logs[1]))
            await settled(broker.bootstrap, topics, app_id, group, ends, 150)
        finally:
            for proc in procs:
                stop(proc)

    try:
        asyncio.run(scenario())
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(p.read_text()[-4000:] for p in logs)) from exc
    store = Store(store_uri)
    try:
        check_store(store, w)
        facts = store.query("SELECT sum(interactions) FROM user_rollups_daily")[0][0]
        assert facts == len(w.traces)  # no fact counted twice, none lost
    finally:
        store.close()
    assert "restored" in logs[0].read_text()


def test_two_sessionizers_share_partitions_and_survive_losing_one(
    broker: TansuBroker, topics: Topics, tmp_path: Path
) -> None:
    """Two sessionizer processes in one group split the partitions; one is killed and the other takes
    its partitions over (restoring their state); the results still equal ground truth."""
    w = generate(users=800, sessions=1600, loose=400, seed=13, per=20)
    store_uri = f"chdb://{tmp_path / 'chdb'}"
    app_id, group = f"sessionizer-{uuid.uuid4().hex[:8]}", f"sink-{uuid.uuid4().hex[:8]}"
    logs = [tmp_path / "a.log", tmp_path / "b.log", tmp_path / "sink.log"]
    store = Store(store_uri)
    migrate(store)

    async def scenario() -> None:
        ends, rest = await publish_first_half(broker, topics, w)
        a = spawn_sessionizer(broker, topics, app_id, tmp_path, logs[0])
        b = spawn_sessionizer(broker, topics, app_id, tmp_path, logs[1])
        sink = Sink(sink_config(broker, topics, store_uri, group), store=store)
        sink_task = asyncio.create_task(sink.run())
        try:

            def owns_some(log: Path) -> bool:
                return "partition " in log.read_text()

            async def progressed() -> bool:
                done = await group_committed(broker.bootstrap, topics.traces, PARTITIONS, app_id)
                return len(done) == PARTITIONS

            await eventually(progressed, 90, "all partitions consumed")
            assert owns_some(logs[0]), "worker a owns no partition"
            assert owns_some(logs[1]), "worker b owns no partition"
            rest_ends = asyncio.create_task(publish(broker.bootstrap, topics.traces, rest))
            await asyncio.sleep(0.5)
            b.send_signal(signal.SIGKILL)
            b.wait(10)
            more = await rest_ends
            ends.update({p: max(ends.get(p, 0), e) for p, e in more.items()})
            await settled(broker.bootstrap, topics, app_id, group, ends, 150)
            assert "restored" in logs[0].read_text()  # the survivor took over b's partitions
        finally:
            stop(a)
            stop(b)
            await sink.stop()
            await sink_task

    try:
        try:
            asyncio.run(scenario())
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(p.read_text()[-4000:] for p in logs[:2])) from exc
        check_store(store, w)
    finally:
        store.close()


# ------------------------------------------------------------------------------------ the sink's marks


def fact_line(src_partition: int, src_offset: int, src_line: int) -> bytes:
    """The fact of one source line: identical every time it is re-emitted."""
    n = src_partition * 1_000_000 + src_offset * 10 + src_line
    return encode_event(
        UserTraceFact(
            user_id=f"user-{n % 5}", trace_id=f"tr-{n:032x}", timestamp_ms=BASE_MS + n, execution_time_ms=n % 977,
            src_partition=src_partition, src_offset=src_offset, src_line=src_line, session_id=f"s-{n % 11}",
            error=n % 7 == 0, total_tokens=n % 13,
        )
    )  # fmt: skip


def facts(src_partition: int, offsets: range, lines: tuple[int, ...] = (0, 1)) -> list[bytes]:
    return [fact_line(src_partition, o, i) for o in offsets for i in lines]


def rollup_totals(store: Store) -> tuple[int, int, int]:
    row = store.query(
        "SELECT sum(interactions), sum(total_duration_ms), sum(total_tokens) FROM user_rollups_daily"
    )[0]
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)


def expected_totals(lines: list[bytes]) -> tuple[int, int, int]:
    distinct = {orjson.loads(line)["trace_id"]: orjson.loads(line) for line in lines}
    return (len(distinct), sum(f.get("execution_time_ms", 0) for f in distinct.values()),
            sum(f.get("total_tokens", 0) for f in distinct.values()))  # fmt: skip


def test_sink_applies_each_fact_once_across_re_emissions_and_restarts(
    broker: TansuBroker, topics: Topics, store: Store, store_uri: str
) -> None:
    """Facts re-emitted by a replaying sessionizer (overlapping and stale ranges) are skipped by the
    source marks, in memory and, after a restart, as loaded from ClickHouse; one source offset split
    over two messages is applied whole."""
    messages = [
        facts(0, range(40)),
        facts(1, range(20)),
        facts(0, range(20, 60)),  # overlaps 20..39: a replay after the sessionizer lost its last flush
        facts(0, range(10)),  # stale replay
        facts(1, range(20, 21), lines=(0,)),  # one source offset split over two messages
        facts(1, range(20, 21), lines=(1,)),
    ]
    group = f"sink-{uuid.uuid4().hex[:8]}"
    cfg = sink_config(broker, topics, store_uri, group)

    async def run_until(ends: dict[int, int]) -> Sink:
        sink = Sink(cfg, store)
        task = asyncio.create_task(sink.run())
        try:
            assert await sink.wait_committed({(topics.user_rollups, 0): ends[0] - 1}, timeout_s=60)
        finally:
            await sink.stop()
            await task
        return sink

    async def main() -> None:
        await ensure_topics(broker.bootstrap, topics, partitions=1)
        ends = await publish(broker.bootstrap, topics.user_rollups, [(0, m) for m in messages])
        first = await run_until(ends)
        assert first.stats().replayed_facts_skipped == 40 + 20
        assert rollup_totals(store) == expected_totals([line for m in messages for line in m])
        # a restarted sink (marks loaded from ClickHouse) meets yet another replay, and new facts
        replay = [facts(0, range(60)), facts(0, range(60, 70))]
        ends = await publish(broker.bootstrap, topics.user_rollups, [(0, m) for m in replay])
        second = await run_until(ends)
        assert second.stats().replayed_facts_skipped == 120
        all_lines = [line for m in messages + replay for line in m]
        assert rollup_totals(store) == expected_totals(all_lines)

    asyncio.run(main())


def test_rollup_batch_written_but_not_committed_is_replayed_exactly(
    broker: TansuBroker, topics: Topics, store: Store, store_uri: str
) -> None:
    """A sink inserted a rollups batch, then died before committing: once before writing the batch's
    marks (the next sink rebuilds the batch with the same token and ClickHouse drops it), once after
    (the next sink skips its facts as applied). Either way the rollups count every fact once."""
    messages = [facts(0, range(k * 10, k * 10 + 10)) for k in range(6)]

    async def crash_then_replay(marks_written: bool) -> Sink:
        group = f"sink-{uuid.uuid4().hex[:8]}"
        crashed = RowBatch()
        for m in messages[:3]:  # offsets 0..2, as a crashed sink built them
            for line in m:
                event = validate_line(line)
                assert not isinstance(event, Rejection)
                crashed.add(event)
        epoch = await read_epoch(broker.bootstrap, topics.epoch) or ""
        begin_epoch(store, epoch, partitions=1)  # as the crashed sink did when it started
        scope = epoch_scope(group, epoch)
        ledger = Ledger(store, scope)
        ledger.record(topics.user_rollups, 0, 0, 2)
        write_batch(store, crashed, batch_token(scope, topics.user_rollups, 0, 0, 2))
        if marks_written:
            ledger.record_marks(topics.user_rollups, 0, {0: (29, 1)})
        sink = Sink(sink_config(broker, topics, store_uri, group), store)
        task = asyncio.create_task(sink.run())
        try:
            assert await sink.wait_committed({(topics.user_rollups, 0): 5}, timeout_s=60)
        finally:
            await sink.stop()
            await task
        assert sink.stats().replayed_batches == 1
        return sink

    async def main() -> None:
        await ensure_topics(broker.bootstrap, topics, partitions=1)
        await publish(broker.bootstrap, topics.user_rollups, [(0, m) for m in messages])
        before = await crash_then_replay(marks_written=False)
        assert before.stats().replayed_facts_skipped == 0  # rebuilt, same token: dropped by ClickHouse
        assert rollup_totals(store) == expected_totals([line for m in messages for line in m])
        store.command("TRUNCATE TABLE user_rollups_daily")
        after = await crash_then_replay(marks_written=True)
        assert after.stats().replayed_facts_skipped == 60  # its facts are stored: skipped
        assert rollup_totals(store) == expected_totals([line for m in messages for line in m])

    asyncio.run(main())
