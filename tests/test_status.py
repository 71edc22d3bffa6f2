"""`tracehouse status` on the real broker and chDB: lag per group and partition, dead letters, store,
SDK reports and the broker's memory, graded; the CLI's exit status; the HTTP route and the gateway's
pause (503 with Retry-After) while the embedded broker is replaced."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest
from test_sink_kafka import FAST, create_topics, envelopes_of, eventually, make_trace, publish, running

from tracehouse.app.embedded import TansuBroker, free_port
from tracehouse.app.status import BrokerProbe, KafkaTarget, Thresholds, collect
from tracehouse.processors import Sink, SinkConfig
from tracehouse.schemas import SdkHeartbeat, Topics
from tracehouse.storage import RowBatch, Store, write_batch

pytestmark = pytest.mark.integration


def test_status_reports_lag_dead_letters_store_and_sdk_drops(
    broker: TansuBroker, topics: Topics, store: Store, store_uri: str
) -> None:
    async def main() -> None:
        await create_topics(broker.bootstrap, topics, 2)
        lines = [make_trace(i) for i in range(40)]
        await publish(broker.bootstrap, topics.traces, [(0, e) for e in envelopes_of(lines, 4)])
        await publish(broker.bootstrap, topics.traces, [(1, b"{broken")])  # one dead letter
        group = f"status-{topics.prefix}"
        kafka = KafkaTarget(broker.bootstrap, topics, group)
        before = await collect(store, kafka, thresholds=Thresholds(max_lag=5))
        sink_lag = next(g for g in before.lag if g.role == "sink")
        assert sink_lag.lag == 11  # nothing consumed yet: 10 envelopes on partition 0, 1 on partition 1
        assert {(p.topic, p.partition): p.lag for p in sink_lag.partitions}[(topics.traces, 0)] == 10
        assert not before.healthy  # 11 records behind, over max_lag=5
        sink = Sink(SinkConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, group_id=group, **FAST), store)
        async with running(sink):
            assert await sink.wait_committed({(topics.traces, 0): 9, (topics.traces, 1): 0}, timeout_s=30)
        after = await collect(store, kafka, thresholds=Thresholds(max_lag=5))
        assert next(g for g in after.lag if g.role == "sink").lag == 0
        assert after.dead_letters == 1
        assert after.store is not None
        assert after.store["traces"] == 40
        assert after.store["newest_trace_age_s"] is not None
        assert after.healthy
        assert {c.name: c.level for c in after.checks}["dead letters"] == "warn"

    asyncio.run(main())
    now = int(time.time() * 1000)
    beats = RowBatch()
    for i, dropped in enumerate((0, 7)):
        beats.add(SdkHeartbeat(process_id=f"host:{i}:x", time_ms=now - 60_000, accepted=100, published=100))
        beats.add(SdkHeartbeat(process_id=f"host:{i}:x", time_ms=now, accepted=200, published=200 - dropped,
                               dropped=dropped))  # fmt: skip
    write_batch(store, beats)
    status = asyncio.run(collect(store))
    assert status.sdk is not None
    assert (status.sdk["processes"], status.sdk["dropped"], status.sdk["published"]) == (2, 7, 393)
    assert {c.name: c.level for c in status.checks}["sdk"] == "warn"


def test_broker_memory_check_warns_then_fails_at_the_limit() -> None:
    def graded(rss: float) -> str:
        status = asyncio.run(collect(None, broker=BrokerProbe(lambda: {"rss_mib": rss, "limit_mib": 100.0})))
        return {c.name: c.level for c in status.checks}["broker memory"]

    assert [graded(50), graded(85), graded(100)] == ["ok", "warn", "fail"]


def test_cli_exit_status_healthy_unhealthy_and_unreachable(store_uri: str, store: Store) -> None:
    store.close()  # chDB: the CLI opens it next
    cli = [sys.executable, "-m", "tracehouse.app", "status", "--uri", store_uri]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEHOUSE_")}
    ok = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0, ok.stderr
    assert '"healthy": true' in ok.stdout
    down = subprocess.run([*cli, "--bootstrap", f"127.0.0.1:{free_port()}"], capture_output=True, text=True,
                          timeout=180, env=env)  # fmt: skip
    assert down.returncode == 1, down.stdout + down.stderr
    assert "UNHEALTHY" in down.stdout
    assert "did not answer" in down.stdout
    nobody = subprocess.run([sys.executable, "-m", "tracehouse.app", "status", "--uri", f"http://127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert nobody.returncode == 3
    assert "cannot reach" in nobody.stderr


def test_paused_gateway_answers_503_with_retry_after(broker: TansuBroker, topics: Topics, store: Store) -> None:
    """While `up` replaces its broker, writes get a 503 with Retry-After (MLflow's client retries it)."""
    from _serve import serving

    from tracehouse.app.server import create_app
    from tracehouse.gateway import Gateway, GatewayConfig

    asyncio.run(create_topics(broker.bootstrap, topics, 1))
    gateway = Gateway(GatewayConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix))
    body = {"trace": {"trace_info": {"trace_id": "tr-" + "a" * 32, "request_time": "2026-01-01T00:00:00Z",
                                     "state": "OK", "trace_location": {"type": "MLFLOW_EXPERIMENT",
                                     "mlflow_experiment": {"experiment_id": "0"}}}}}  # fmt: skip
    with serving(store, create_app(store, gateway=gateway)) as url:
        gateway.pause("the embedded broker is being replaced (memory limit)", retry_after_s=5)
        paused = httpx.post(url + "/api/3.0/mlflow/traces", json=body, timeout=30)
        assert paused.status_code == 503
        assert paused.headers["Retry-After"] == "5"
        assert paused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        status = httpx.get(url + "/api/tracehouse/v1/status", timeout=60).json()
        assert {c["name"] for c in status["checks"]} >= {"store", "sink lag", "dead letters"}
        gateway.paused = None  # resume (without a new broker: nothing else to reset)
        assert httpx.post(url + "/api/3.0/mlflow/traces", json=body, timeout=30).status_code == 200


def test_sdk_heartbeats_reach_status(broker: TansuBroker, topics: Topics, store: Store) -> None:
    """An app's SDK reports its counters (and, at shutdown, its final ones) through the pipeline."""
    import tracehouse

    @tracehouse.trace
    def answer(i: int) -> str:
        tracehouse.update_current_trace(metadata={"mlflow.trace.user": "u1", "mlflow.trace.session": "s1"})
        return f"a{i}"

    async def main() -> None:
        await create_topics(broker.bootstrap, topics, 2)
        config = SinkConfig(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, group_id=topics.prefix, **FAST)
        sink = Sink(config, store)
        async with running(sink):
            await asyncio.to_thread(tracehouse.configure, kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix,
                                    heartbeat_interval=0.3, service_name="status-test")  # fmt: skip
            for i in range(50):
                answer(i)
            assert await asyncio.to_thread(tracehouse.flush, 30)
            await asyncio.to_thread(tracehouse.shutdown, 10)  # the last heartbeat carries the final counts

            def reported() -> bool:
                rows = store.query("SELECT max(published) FROM sdk_heartbeats WHERE service = 'status-test'")
                return bool(rows and rows[0][0] == 50)

            await eventually(reported, 60, "the final heartbeat stored")

    try:
        asyncio.run(main())
    finally:
        tracehouse.shutdown()
    status = asyncio.run(collect(store))
    assert status.sdk is not None
    assert status.sdk["processes"] == 1
    assert (status.sdk["published"], status.sdk["dropped"], status.sdk["failed"]) == (50, 0, 0)
    assert store.query("SELECT count() FROM traces")[0][0] == 50  # heartbeats are not traces
