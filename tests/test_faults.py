"""The fault suite, on the real broker and chDB: each fault, what must hold afterwards, and the figures
measured (printed; run `pytest -s tests/test_faults.py` to see them, `--long` for bigger repetitions).

- a sink that cannot write (a fault-injecting wrapper around the real chDB store): it backs off,
  pauses its partitions with bounded memory, and catches up when writes succeed again;
- a write stuck past the sink's deadline: the sink stops (WriteStuck) and a new one recovers from the
  committed offsets;
- SIGKILL of the sessionizer and of the sink, at random points, 5 times each, during 50,000 traces:
  every trace stored once, sessions and rollups exact;
- a graceful stop of `up` under load: everything acknowledged is stored.

The SDK's faults (broker down at start, bursts past the buffer) are in tests/test_sdk_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_sink_kafka import FAST, create_topics, envelopes_of, eventually, make_trace, publish, running

from tracehouse.app.embedded import TansuBroker
from tracehouse.processors import Sink, SinkConfig
from tracehouse.schemas import Topics
from tracehouse.schemas.errors import WriteStuck
from tracehouse.storage import StateTable, Store, migrate

pytestmark = pytest.mark.integration


class FaultyStore(Store):
    """The real chDB store, with writes that fail (``failing``) or hang until released (``stuck``)."""

    failing = False
    stuck: threading.Event | None = None
    refused = 0

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str],
               settings: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        if self.stuck is not None:
            self.stuck.wait()
            raise ConnectionError("the stuck insert gave up")
        if self.failing:
            self.refused += 1
            raise ConnectionError("ClickHouse is unreachable (injected)")
        super().insert(table, rows, column_names, settings)


def _count(store: Store) -> tuple[int, int]:
    rows = store.query("SELECT count(), uniqExact(trace_id) FROM traces")[0]
    return int(rows[0]), int(rows[1])


def test_a_sink_that_cannot_write_backs_off_with_bounded_memory_and_catches_up(
    broker: TansuBroker, topics: Topics, tmp_path: Path
) -> None:
    store = FaultyStore(f"chdb://{tmp_path / 'chdb'}")
    migrate(store)
    total = 2_000
    config = SinkConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, group_id=f"faulty-{topics.prefix}",
                        max_batch_rows=500, **{**FAST, "retry_backoff_max_ms": 800})  # fmt: skip

    async def main() -> None:
        await create_topics(broker.bootstrap, topics, 2)
        sink = Sink(config, store)
        async with running(sink):
            await eventually(lambda: StateTable(store).epoch() is not None, 60, "the sink to register its epoch")
            store.failing = True  # ClickHouse goes away, then the traces come
            lines = [make_trace(i) for i in range(total)]
            await publish(broker.bootstrap, topics.traces, [(i % 2, e) for i, e in enumerate(envelopes_of(lines, 10))])
            await eventually(lambda: sink.stats().flush_failures >= 6, 60, "failed flushes")
            down = sink.stats()
            assert down.flush_failures >= 6
            # Paused and rewound: it holds at most one batch per partition, not the stream.
            assert down.pending_events <= 2 * config.max_batch_rows
            assert down.pending_events < total
            assert all(offset == 0 for offset in down.committed.values())
            print(f"\n[sink cannot write] {down.flush_failures} failed flushes in backoff, {down.pending_events} "
                  f"events held of {total} waiting, nothing committed")
            store.failing = False
            t0 = time.monotonic()
            assert await sink.wait_committed({(topics.traces, 0): total // 20 - 1, (topics.traces, 1): total // 20 - 1},
                                             timeout_s=120)  # fmt: skip
            print(f"[sink cannot write] caught up {total} traces {time.monotonic() - t0:.1f}s after writes resumed")

    try:
        asyncio.run(main())
        assert _count(store) == (total, total)
    finally:
        store.close()


def test_a_write_stuck_past_its_deadline_stops_the_sink_and_a_new_one_recovers(
    broker: TansuBroker, topics: Topics, tmp_path: Path
) -> None:
    store = FaultyStore(f"chdb://{tmp_path / 'chdb'}")
    migrate(store)
    total = 600
    config = SinkConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, group_id=f"stuck-{topics.prefix}",
                        write_timeout_s=2.0, **FAST)  # fmt: skip

    async def main() -> None:
        await create_topics(broker.bootstrap, topics, 1)
        lines = [make_trace(i) for i in range(total)]
        stuck = Sink(config, store)
        task = asyncio.create_task(stuck.run())
        await eventually(lambda: StateTable(store).epoch() is not None, 60, "the sink to register its epoch")
        store.stuck = threading.Event()  # the server hangs, then the traces come
        await publish(broker.bootstrap, topics.traces, [(0, e) for e in envelopes_of(lines, 10)])
        t0 = time.monotonic()
        with pytest.raises(WriteStuck, match="did not return within 2s"):
            await asyncio.wait_for(task, 60)
        print(f"\n[stuck write] the sink stopped {time.monotonic() - t0:.1f}s after the traces came (deadline 2s)")
        assert stuck.committed_offsets().get((topics.traces, 0), 0) == 0
        release, store.stuck = store.stuck, None
        release.set()  # the stuck thread gives up; a new sink replays from the committed offsets
        again = Sink(config, store)
        async with running(again):
            assert await again.wait_committed({(topics.traces, 0): total // 10 - 1}, timeout_s=60)

    try:
        asyncio.run(main())
        assert _count(store) == (total, total)
    finally:
        store.close()


def _traces(n: int, seed: int) -> list[Any]:
    """``n`` traces of ~2,000 sessions (1-60 turns) and some users' session-less traces, spread over an
    hour of event time so that sessions close, ordered by time as apps would send them."""
    from _up import Conversations

    talk = Conversations(sessions=2_000, users=400, seed=seed)
    base = int(time.time() * 1000) - 3 * 3_600_000
    events: list[Any] = []
    r = 0
    while len(events) < n:
        events += talk.round(base + r * 8 * 60_000, turns=(1, 4))
        r += 1
    return events[:n]


@pytest.mark.timeout(1200)  # its own waits are bounded (120 s per kill's progress, 300 s to settle)
def test_sigkills_of_the_sessionizer_and_the_sink_lose_and_duplicate_nothing(
    broker: TansuBroker, topics: Topics, tmp_path: Path, long_run: bool
) -> None:
    """Roles apart on one broker: 50,000 traces streamed while the sessionizer and the sink are each
    SIGKILLed 5 times at random points (200,000 and 10 each with --long) and restarted."""
    import signal

    import psutil
    from _processes import sessionizer_command, spawn, stop
    from _truth import assert_exact, stored_traces
    from _up import PARTITIONS, publish_async
    from test_rollups import settled, spawn_sink
    from test_sink_kafka import group_committed

    total, kills = (200_000, 10) if long_run else (50_000, 5)
    events = _traces(total, seed=17)
    store_uri = f"chdb://{tmp_path / 'chdb'}"
    app_id, group = f"kill-sessionizer-{topics.prefix}", f"kill-sink-{topics.prefix}"
    logs = [tmp_path / "sessionizer.log", tmp_path / "sink.log"]
    rng = random.Random(23)
    peak: dict[str, float] = {"sessionizer": 0.0, "sink": 0.0}

    def start(role: str) -> Any:
        if role == "sink":
            return spawn_sink(broker, topics, store_uri, group, logs[1])
        return spawn(sessionizer_command(broker.bootstrap, topics.prefix, app_id, PARTITIONS,
                                         tmp_path / f"faust-{time.monotonic_ns()}"), logs[0])  # fmt: skip

    async def scenario() -> dict[int, int]:
        from tracehouse.app.embedded import ensure_topics

        await ensure_topics(broker.bootstrap, topics, PARTITIONS)
        procs = {"sessionizer": start("sessionizer"), "sink": start("sink")}
        ends: dict[int, int] = {}
        try:
            order = ["sessionizer", "sink"] * kills
            rng.shuffle(order)
            chunks = [events[i :: len(order) + 1] for i in range(len(order) + 1)]
            chunks = [sorted(c, key=lambda e: e.timestamp_ms) for c in chunks]
            groups = {"sessionizer": app_id, "sink": group}
            for chunk, victim in zip(chunks, [*order, None], strict=True):
                before = {role: sum((await group_committed(broker.bootstrap, topics.traces, PARTITIONS, g)).values())
                          for role, g in groups.items()}  # fmt: skip
                await publish_async(broker.bootstrap, topics.traces, chunk)
                for role, proc in procs.items():
                    with contextlib.suppress(psutil.Error):
                        peak[role] = max(peak[role], psutil.Process(proc.pid).memory_info().rss / 2**20)
                if victim is None:
                    continue

                async def progressed(role: str = victim, seen: dict[str, int] = before) -> bool:
                    done = await group_committed(broker.bootstrap, topics.traces, PARTITIONS, groups[role])
                    return sum(done.values()) > seen[role]  # killed mid-stream, not while starting

                await eventually(progressed, 120, f"the {victim} to make progress")
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait(30)
                procs[victim] = start(victim)
            from test_rollups import topic_ends

            ends = await topic_ends(broker.bootstrap, topics.traces)
            t0 = time.monotonic()
            await settled(broker.bootstrap, topics, app_id, group, ends, 300)
            print(f"\n[sigkills] settled {time.monotonic() - t0:.1f}s after the last kill")
        finally:
            for proc in procs.values():
                stop(proc)
        return ends

    try:
        asyncio.run(scenario())
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(p.read_text()[-3000:] for p in logs)) from exc
    with Store(store_uri) as store:
        rows, distinct = _count(store)
        stored = set(stored_traces(store))
        sent = {e.trace_id for e in events}
        print(f"[sigkills] sent {len(sent)}, stored {distinct}, duplicated {rows - distinct}, lost "
              f"{len(sent - stored)}, {kills} SIGKILLs each of the sessionizer and the sink; peak RSS "
              f"sessionizer {peak['sessionizer']:.0f} MiB, sink {peak['sink']:.0f} MiB")  # fmt: skip
        assert rows == distinct == len(sent)
        assert stored == sent
        assert_exact(store, PARTITIONS)
        facts = int(store.query("SELECT sum(interactions) FROM user_rollups_daily")[0][0])
        assert facts == len(sent)
    assert logs[0].read_text().count("restored") >= 1


def test_a_graceful_stop_of_up_under_load_stores_everything_acknowledged(tmp_path: Path) -> None:
    """Two loads on `up`, an app writing to its broker and an MLflow client writing through its HTTP
    API, and Ctrl-C in the middle: every trace either was acknowledged and is stored, or was refused."""
    import signal

    import httpx
    from _up import Conversations, Up

    from tracehouse.schemas import encode_event
    from tracehouse.schemas.kafka import pack, partition_for, partition_key

    up = Up(tmp_path / "data")
    up.start()
    acked_kafka: list[str] = []
    acked_http: list[str] = []
    stop_load = threading.Event()
    talk = Conversations(sessions=300, users=50, seed=29)
    base = int(time.time() * 1000) - 3_600_000

    async def kafka_load() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=up.bootstrap, acks="all", request_timeout_ms=5000)
        await producer.start()
        try:
            r = 0
            while not stop_load.is_set():
                events = talk.round(base + r * 1000, list(range(r % 300, r % 300 + 10)), turns=(1, 2))
                r += 1
                lines = [(partition_for(partition_key(e).encode(), range(4)), None, encode_event(e)) for e in events]
                for env in pack(lines, max_lines=10):
                    await producer.send_and_wait(up.topic_traces, env.value, partition=env.partition,
                                                 headers=env.headers())  # fmt: skip
                acked_kafka.extend(e.trace_id for e in events)
        except Exception:
            pass
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    def http_load() -> None:
        # Recent times: `up` keeps 30 days by default, and an older trace may be gone at the next merge.
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        n = 0
        while not stop_load.is_set():
            n += 1
            trace_id = f"tr-{0xF0000000 + n:032x}"
            body = {"trace": {"trace_info": {
                "trace_id": trace_id, "request_time": now, "state": "OK",
                "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": "0"}},
                "trace_metadata": {"mlflow.trace.user": "http-user", "mlflow.trace.session": f"http-{n % 20}"},
            }}}  # fmt: skip
            try:
                if httpx.post(up.url + "/api/3.0/mlflow/traces", json=body, timeout=10).status_code == 200:
                    acked_http.append(trace_id)
            except httpx.HTTPError:
                time.sleep(0.05)

    loads = [threading.Thread(target=lambda: asyncio.run(kafka_load())), threading.Thread(target=http_load)]
    for t in loads:
        t.start()
    time.sleep(4)  # both loads running
    assert up.proc is not None
    up.proc.send_signal(signal.SIGINT)
    time.sleep(2)  # the app keeps writing to the broker while `up` drains
    stop_load.set()
    for t in loads:
        t.join(60)
    up.proc.wait(180)
    assert up.proc.returncode == 0, up.log()
    with Store(f"chdb://{tmp_path / 'data' / 'chdb'}") as store:
        stored = {str(r[0]) for r in store.query("SELECT trace_id FROM traces")}
    print(f"\n[graceful stop under load] acknowledged {len(acked_kafka)} (Kafka) + {len(acked_http)} (HTTP), "
          f"stored {len(stored)}, acknowledged but not stored {len((set(acked_kafka) | set(acked_http)) - stored)}")
    assert acked_kafka
    assert acked_http
    assert set(acked_kafka) <= stored
    assert set(acked_http) <= stored
