"""Exact across restarts and crashes, on the real broker and chDB: after a graceful restart of `up`, a
SIGKILL of its whole process group, and the loss of the broker's memory, sessions and per-user rollups
equal a brute-force recomputation over the traces that are stored (tests/_truth.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _truth import assert_exact, stored_traces
from _up import PARTITIONS, Conversations, Up, publish, publish_async, wait_for

from tracehouse.storage import Store

pytestmark = pytest.mark.integration

MIN = 60_000


def test_up_restarted_gracefully_and_killed_keeps_sessions_and_rollups_exact(tmp_path: Path) -> None:
    """Three rounds of turns to the same 36 sessions of 12 users, with a graceful restart of `up` and a
    SIGKILL of its whole process group between them. Rounds are 40 minutes apart in event time, so a
    session left out of a round closes (30-minute gap) and a later turn reopens it."""
    up = Up(tmp_path / "data")
    talk = Conversations()
    base = int(time.time() * 1000) - 6 * 60 * MIN
    sent: set[str] = set()

    def send_round(r: int, which: list[int] | None) -> set[str]:
        events = talk.round(base + r * 40 * MIN, which)
        publish(up.bootstrap, events)
        ids = {e.trace_id for e in events}
        sent.update(ids)
        return ids

    up.start()
    first = send_round(0, None)
    wait_for(lambda: first <= up.stored_ids(), 90, "round 1 stored")
    up.stop()  # graceful: drains, marks the store consistent

    up.start()
    second = send_round(1, list(range(24)))  # 24 sessions continue, 12 wait
    wait_for(lambda: len(second & up.stored_ids()) >= len(second) // 2, 90, "round 2 partly stored")
    up.kill()
    killed_log = up.log()

    up.start()  # reconciles what the kill left, continues from the store
    third = send_round(2, list(range(12, 36)))  # 12 continue from round 2, 12 reopen after a pause
    wait_for(lambda: third <= up.stored_ids(), 90, "round 3 stored")
    restarted_log = up.log()
    up.stop()

    assert "unclean stop" not in killed_log, killed_log  # the graceful restart needed no repair
    assert "an unclean stop left sessions and rollups to repair" in restarted_log, restarted_log
    with Store(f"chdb://{tmp_path / 'data' / 'chdb'}") as store:
        stored = set(stored_traces(store))
        assert stored <= sent
        assert first | third <= stored  # everything sent while `up` was not killed
        assert_exact(store, PARTITIONS)
        turns = dict(store.query("SELECT session_id, turns FROM sessions FINAL WHERE turns > 0"))
        assert len(turns) == 36
        assert sum(turns.values()) == len(stored)


def test_broker_memory_loss_keeps_everything_exact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The broker loses its data (stopped, started again empty on the same port) while a sink runs: the
    sink goes on in the new epoch (offsets from 0 again are not taken for replays), the restarted
    sessionizer continues every session from the store, and traces sent again after the loss (an app's
    retry) count once."""
    import asyncio

    from test_sink_kafka import FAST

    from tracehouse.app.embedded import TansuBroker, ensure_topics, free_port
    from tracehouse.processors import Sink, SinkConfig
    from tracehouse.processors.sessions import Sessionizer, SessionizerConfig, run_sessionizer
    from tracehouse.schemas import Topics
    from tracehouse.storage import migrate

    port = free_port()
    topics = Topics("loss.")
    store = Store(f"chdb://{tmp_path / 'chdb'}")
    migrate(store)
    talk = Conversations(seed=5)
    base = int(time.time() * 1000) - 3 * 60 * MIN
    round_one = talk.round(base, turns=(2, 4))
    round_two = talk.round(base + 40 * MIN, list(range(30)), turns=(1, 3))
    resent = round_one[::7]  # re-sent after the loss: already stored, must count once

    def settled(expected: int) -> bool:
        n = store.query("SELECT count() FROM traces FINAL")[0][0]
        turns = store.query("SELECT sum(turns) FROM sessions FINAL WHERE turns > 0")[0][0]
        facts = store.query("SELECT sum(interactions) FROM user_rollups_daily")[0][0]
        return bool(n == expected and turns == expected and facts == expected)

    async def eventually(check: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.3)

    def sessionizer() -> tuple[asyncio.Event, asyncio.Task[object]]:
        config = SessionizerConfig.resolve(
            bootstrap=f"127.0.0.1:{port}", topic_prefix=topics.prefix, app_id=f"loss-{time.monotonic_ns()}",
            partitions=PARTITIONS, rollup_partitions=PARTITIONS, flush_interval_ms=200,
            datadir=str(tmp_path / "faust"), env={},
        )  # fmt: skip
        stop = asyncio.Event()
        return stop, asyncio.create_task(run_sessionizer(config, stop, sessionizer=Sessionizer(config, store)))

    async def scenario() -> None:
        broker = TansuBroker(port=port, log_path=tmp_path / "tansu.log").start()
        await ensure_topics(broker.bootstrap, topics, PARTITIONS)
        sink = Sink(SinkConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, group_id="loss-sink",
                               **FAST), store)  # fmt: skip
        sink_task = asyncio.create_task(sink.run())
        stop, worker = sessionizer()
        await publish_async(broker.bootstrap, topics.traces, round_one)
        await eventually(lambda: settled(len(round_one)), 120, "round one stored, sessionized and rolled up")
        stop.set()
        await asyncio.wait_for(worker, 60)

        broker.stop()  # everything the broker held is gone
        broker = TansuBroker(port=port, log_path=tmp_path / "tansu.log").start()
        await ensure_topics(broker.bootstrap, topics, PARTITIONS)
        stop, worker = sessionizer()
        await publish_async(broker.bootstrap, topics.traces, round_two + resent)
        expected = len(round_one) + len(round_two)
        await eventually(lambda: settled(expected), 180, "round two stored, sessionized and rolled up")
        stop.set()
        await asyncio.wait_for(worker, 60)
        await sink.stop()
        await sink_task
        broker.stop()

    try:
        with caplog.at_level("WARNING", logger="tracehouse.sink"):
            asyncio.run(scenario())
        assert "broker epoch changed" in caplog.text  # the same sink went on in the new epoch
        assert len(stored_traces(store)) == len(round_one) + len(round_two)
        assert_exact(store, PARTITIONS)
    finally:
        store.close()


def test_roles_apart_on_a_broker_that_lost_its_data_apply_every_new_fact(tmp_path: Path) -> None:
    """The sink and the sessionizer run as processes, the sink with a fixed consumer group; the broker
    loses its data. New traces then sit at the offsets old ones had: the sink's ledger, tokens and
    rollup marks, keyed by the broker epoch, must not take them (or their facts) for replays."""
    import asyncio

    from _processes import sessionizer_command, spawn, stop
    from test_rollups import publish as publish_envelopes
    from test_rollups import settled, spawn_sink

    from tracehouse.app.embedded import TansuBroker, ensure_topics, free_port
    from tracehouse.schemas import Topics, TraceEvent, encode_event
    from tracehouse.schemas.kafka import partition_for, partition_key

    port = free_port()
    topics = Topics("apart.")
    store_uri = f"chdb://{tmp_path / 'chdb'}"
    talk = Conversations(sessions=40, users=10, seed=9)
    base = int(time.time() * 1000) - 3 * 60 * MIN
    round_one = talk.round(base, list(range(20)), turns=(3, 5))
    round_two = talk.round(base + 10 * MIN, list(range(20, 40)), turns=(3, 5))  # new sessions, same users
    logs = [tmp_path / "sink.log", tmp_path / "sessionizer.log"]

    def run_round(broker: TansuBroker, events: list[TraceEvent], n: int) -> None:
        envelopes = [(partition_for(partition_key(e).encode(), range(PARTITIONS)), [encode_event(e)]) for e in events]
        sink = spawn_sink(broker, topics, store_uri, "tracehouse-sink", logs[0])
        worker = spawn(sessionizer_command(broker.bootstrap, topics.prefix, "apart-sessionizer", PARTITIONS,
                                           tmp_path / f"faust-{n}"), logs[1])  # fmt: skip
        try:
            ends = asyncio.run(publish_envelopes(broker.bootstrap, topics.traces, envelopes))
            asyncio.run(settled(broker.bootstrap, topics, "apart-sessionizer", "tracehouse-sink", ends, 150))
        finally:
            stop(worker)
            stop(sink)

    def stored() -> tuple[int, int]:
        with Store(store_uri) as s:  # chDB is ours once the sink stopped
            traces = s.query("SELECT count() FROM traces FINAL")[0][0]
            facts = s.query("SELECT sum(interactions) FROM user_rollups_daily")[0][0]
            return int(traces), int(facts or 0)

    broker = TansuBroker(port=port, log_path=tmp_path / "tansu.log").start()
    try:
        asyncio.run(ensure_topics(broker.bootstrap, topics, PARTITIONS))
        run_round(broker, round_one, 1)
        assert stored() == (len(round_one), len(round_one)), "\n".join(p.read_text()[-3000:] for p in logs)
        broker.stop()
        broker = TansuBroker(port=port, log_path=tmp_path / "tansu.log").start()
        asyncio.run(ensure_topics(broker.bootstrap, topics, PARTITIONS))
        run_round(broker, round_two, 2)
    finally:
        broker.stop()
    total = len(round_one) + len(round_two)
    assert stored() == (total, total), "\n".join(p.read_text()[-3000:] for p in logs)
    with Store(store_uri) as s:
        assert_exact(s, PARTITIONS)


def test_evicted_sessions_reload_exactly_when_they_reopen(tmp_path: Path) -> None:
    """With a store, closed sessions (and users' days of session-less traces) are evicted once the store
    holds them exactly; a late turn reloads them, and turns re-sent after the eviction count once."""
    import asyncio
    import dataclasses

    import msgspec
    from test_sink_kafka import FAST

    from tracehouse.app.embedded import TansuBroker, ensure_topics
    from tracehouse.processors import Sink, SinkConfig
    from tracehouse.processors.sessions import Sessionizer, SessionizerConfig, run_sessionizer
    from tracehouse.schemas import Topics
    from tracehouse.storage import migrate

    topics = Topics("evict.")
    store = Store(f"chdb://{tmp_path / 'chdb'}")
    migrate(store)
    talk = Conversations(sessions=30, users=6, seed=11)
    base = int(time.time() * 1000) - 24 * 60 * MIN
    old = talk.round(base, turns=(2, 3))
    loose = [msgspec.structs.replace(e, trace_id=f"tr-{i + 1:032x}", metadata={"mlflow.trace.user": "user-00"})
             for i, e in enumerate(old[:5])]  # fmt: skip
    later = talk.round(base + 4 * 60 * MIN, list(range(20, 30)))  # pushes event time 4 h on
    reopen = talk.round(base + 10 * MIN, list(range(10)), turns=(1, 2))  # late turns to evicted sessions
    again = old[::5] + loose[:2]  # re-sent after their sessions were evicted

    config = SessionizerConfig.resolve(
        bootstrap="", topic_prefix=topics.prefix, app_id="evict-sessionizer", partitions=PARTITIONS,
        rollup_partitions=PARTITIONS, flush_interval_ms=200, datadir=str(tmp_path / "faust"), env={},
        state_retention_ms=60 * MIN,
    )  # fmt: skip

    def settled(expected: int) -> bool:
        n = store.query("SELECT count() FROM traces FINAL")[0][0]
        turns = store.query("SELECT sum(turns) FROM sessions FINAL WHERE turns > 0")[0][0]
        facts = store.query("SELECT sum(interactions) FROM user_rollups_daily")[0][0]
        return bool(n == expected and turns == expected - len(loose) and facts == expected)

    async def until(check: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.3)

    async def scenario() -> Sessionizer:
        with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
            await ensure_topics(broker.bootstrap, topics, PARTITIONS)
            sink = Sink(SinkConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, group_id="evict-sink",
                                   **FAST), store)  # fmt: skip
            sink_task = asyncio.create_task(sink.run())
            cfg = dataclasses.replace(config, bootstrap=broker.bootstrap)
            worker = Sessionizer(cfg, store)
            stop = asyncio.Event()
            task = asyncio.create_task(run_sessionizer(cfg, stop, sessionizer=worker))
            await publish_async(broker.bootstrap, topics.traces, old + loose)
            await until(lambda: settled(len(old) + len(loose)), 120, "the old turns")
            await publish_async(broker.bootstrap, topics.traces, later)
            expected = len(old) + len(loose) + len(later)
            await until(lambda: settled(expected) and worker.stats.sessions_evicted >= 20, 120, "evictions")
            await publish_async(broker.bootstrap, topics.traces, reopen + again)
            await until(lambda: settled(expected + len(reopen)), 120, "the late turns")
            stop.set()
            await asyncio.wait_for(task, 60)
            await sink.stop()
            await sink_task
            return worker

    try:
        worker = asyncio.run(scenario())
        assert worker.stats.sessions_loaded >= 10  # the reopened sessions, read back
        assert_exact(store, PARTITIONS)
    finally:
        store.close()


@pytest.mark.timeout(900)  # its own waits are bounded (rounds of 120 s, 60 s for the new generation)
def test_broker_at_its_memory_limit_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    """`up` with a small broker memory limit: past it, the broker is replaced by a new generation after
    a drain; sessions continue across it, status reports it, and everything sent is stored once."""
    import httpx

    up = Up(tmp_path / "data", extra=("--broker-memory-limit-mb", "24"))
    talk = Conversations(sessions=200, users=40, seed=3)
    base = int(time.time() * 1000) - 3 * 60 * MIN
    sent: set[str] = set()

    def status() -> dict[str, object]:
        body: dict[str, object] = httpx.get(up.url + "/api/tracehouse/v1/status", timeout=60).json()
        return body

    def generations() -> int:
        broker = status()["broker"]
        assert isinstance(broker, dict)
        return int(broker["rollovers"])

    up.start()
    try:
        for r in range(12):
            events = talk.round(base + r * MIN, turns=(20, 30))
            publish(up.bootstrap, events)
            sent.update(e.trace_id for e in events)
            wait_for(lambda: sent <= up.stored_ids(), 120, f"round {r} stored", up.log)
            if generations() >= 1:  # one switch is the point; more only slow the test down
                break
        assert generations() >= 1, up.log()
        after = talk.round(base + 20 * MIN, turns=(2, 3))  # to the new generation, same sessions
        publish(up.bootstrap, after)
        sent.update(e.trace_id for e in after)
        wait_for(lambda: sent <= up.stored_ids(), 120, "the round after the new generation stored", up.log)
        # Read-your-writes through the gateway waits on the new generation's sink, not the stopped one.
        tagged = after[-1].trace_id
        patched = httpx.patch(f"{up.url}/api/2.0/mlflow/traces/{tagged}/tags", json={"key": "k", "value": "v"},
                              timeout=60)  # fmt: skip
        assert patched.status_code == 200, patched.text
        got = httpx.get(f"{up.url}/api/3.0/mlflow/traces/get", params={"trace_id": tagged}, timeout=60).json()
        assert got["trace"]["trace_info"]["tags"]["k"] == "v"
        final = status()
        assert final["healthy"], final
    finally:
        up.stop()
    assert "starting a new broker generation" in up.log()
    assert "read-your-writes wait timed out" not in "\n".join(up.lines)
    with Store(f"chdb://{tmp_path / 'data' / 'chdb'}") as store:
        assert set(stored_traces(store)) == sent
        assert_exact(store, PARTITIONS)


@pytest.mark.timeout(900)  # its own waits are bounded (300 s of writing, 180 s to store)
def test_a_new_broker_generation_under_sustained_sdk_writes_loses_nothing(tmp_path: Path, long_run: bool) -> None:
    """An app keeps writing to `up`'s broker through the SDK (the gateway's pause cannot stop it) while
    `up` replaces its broker at the memory limit: `up` drains to a cut instead of waiting for a quiet
    that never comes, the SDK re-sends what the old broker took past the cut, and every trace is stored
    once with sessions and rollups exact, without a reconciliation.

    Only with ``--long``: in about 2 runs of 5 the new broker (Tansu 0.6.0) answers concurrent first
    writes to a fresh partition with UNKNOWN_SERVER_ERROR ("AlreadyExists ... 0.batch" in its log) and
    some traces are then not stored (docs/reliability.md, "known limit"); the 30-minute soak measures
    the same path (0 of 1,800,001 lost)."""
    if not long_run:
        pytest.skip("exposes a Tansu race at a new generation (docs/reliability.md); run with --long")
    import httpx

    import tracehouse

    @tracehouse.trace
    def chat(user: str, session: str, message: str) -> str:
        tracehouse.update_current_trace(metadata={"mlflow.trace.user": user, "mlflow.trace.session": session})
        return message[::-1]

    up = Up(tmp_path / "data", extra=("--broker-memory-limit-mb", "24"))
    up.start()
    sent: list[str] = []
    try:
        # a replay window no busy machine outlasts between the cut and the new broker's first ack
        tracehouse.configure(kafka_bootstrap=up.bootstrap, linger_ms=5, replay_window=600,
                             replay_max_bytes=1 << 30)  # fmt: skip

        def logged(text: str) -> bool:
            return any(text in line for line in up.lines)

        deadline, after = time.monotonic() + 300, None
        while time.monotonic() < deadline and (after is None or len(sent) < after or not logged("writes resumed")):
            for _ in range(40):  # at most about 800 traces/s: no pause between the limit and the switch
                i = len(sent)
                chat(f"user-{i % 37}", f"session-{i % 400}", f"message {i} " + "x" * 300)
                sent.append(tracehouse.get_last_active_trace_id() or "")
            time.sleep(0.05)
            if after is None and logged("starting a new broker generation"):
                after = len(sent) + 4000  # write through the drain and past the switch
        assert after is not None, up.log()
        assert tracehouse.flush(timeout=120) is True
        stats = tracehouse.stats()
        wait_for(lambda: set(sent) <= up.stored_ids(), 180, "every trace sent stored")
        # Read-your-writes through the gateway waits on the new generation's sink, not the stopped one.
        tagged = sent[-1]
        r = httpx.patch(f"{up.url}/api/2.0/mlflow/traces/{tagged}/tags", json={"key": "k", "value": "v"}, timeout=60)
        assert r.status_code == 200, r.text
        got = httpx.get(f"{up.url}/api/3.0/mlflow/traces/get", params={"trace_id": tagged}, timeout=60).json()
        assert got["trace"]["trace_info"]["tags"]["k"] == "v"
    finally:
        tracehouse.shutdown(timeout=5.0)
        up.stop()
    log = "\n".join(up.lines)
    print(f"\n[generation under load] sent {len(sent)}, replayed {stats.replayed}")
    print("\n".join(line for line in up.lines if "tracehouse.up" in line))
    assert "drained to the cut" in log, log
    assert "timed out" not in log, log
    assert "reconciled" not in log, log  # the store was consistent at the switch
    assert "read-your-writes wait timed out" not in log, log
    assert stats.dropped == 0
    assert stats.replayed > 0  # the old broker took envelopes past the cut: they were sent again
    with Store(f"chdb://{tmp_path / 'data' / 'chdb'}") as store:
        assert set(stored_traces(store)) == set(sent)
        assert_exact(store, PARTITIONS)


@pytest.mark.timeout(300)
def test_a_cut_lets_a_producer_finish_its_batch_first(tmp_path: Path) -> None:
    """The drain before a new broker generation, while a plain Kafka producer (which cannot re-send
    what lands past a cut) is still sending: the broker settles first, so its whole batch is in the cut
    and stored, and the store is marked consistent. Without the settle the cut is taken at once and
    the chunks sent after it are lost."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    from tracehouse.app.embedded import TansuBroker, ensure_topics
    from tracehouse.app.embedded._processors import EmbeddedProcessors, ProcessorOptions
    from tracehouse.schemas import Topics, encode_event
    from tracehouse.schemas.kafka import pack, partition_for, partition_key
    from tracehouse.storage import StateTable, migrate

    topics = Topics(prefix="tracehouse.")
    events = Conversations(sessions=40, users=8, seed=11).round(int(time.time() * 1000) - 60 * MIN, turns=(5, 8))
    lines = [(partition_for(partition_key(e).encode(), range(PARTITIONS)), None, encode_event(e)) for e in events]
    envelopes = pack(lines, max_lines=5)
    store = Store(f"chdb://{tmp_path / 'chdb'}")
    migrate(store)

    async def main(bootstrap: str) -> bool:
        await ensure_topics(bootstrap, topics, PARTITIONS)
        options = ProcessorOptions(partitions=PARTITIONS, inactivity_gap_ms=30 * MIN, max_duration_ms=None,
                                   infer_sessions=False, datadir=str(tmp_path / "sessionizer"))  # fmt: skip
        processors = EmbeddedProcessors(bootstrap, topics, store, options)
        await processors.start()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            first = 10
            for env in envelopes[:first]:
                await (await producer.send(topics.traces, env.value, partition=env.partition, headers=env.headers()))
            deadline = time.monotonic() + 120
            while processors.sink is None or len(processors.sink.positions(topics.traces) or {}) < PARTITIONS:
                assert time.monotonic() < deadline, "the sink never pinned its partitions"
                await asyncio.sleep(0.1)
            cutting = asyncio.create_task(processors.stop_at_cut(120, settle_s=120, quiet_s=3.0))
            await asyncio.sleep(0.2)  # the drain has begun: the rest is sent after it
            for env in envelopes[first:]:
                await (await producer.send(topics.traces, env.value, partition=env.partition, headers=env.headers()))
                await asyncio.sleep(0.02)
            drained, _ = await cutting
            return drained
        finally:
            await producer.stop()

    try:
        with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
            assert asyncio.run(main(broker.bootstrap)) is True
        assert set(stored_traces(store)) == {e.trace_id for e in events}
        assert StateTable(store).consistent_ms() is not None
    finally:
        store.close()
