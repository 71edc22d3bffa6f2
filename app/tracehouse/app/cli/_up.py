"""``tracehouse up``: the whole pipeline in one process on the embedded defaults.

Tansu broker (child process) → sink (asyncio task) → chDB store ← HTTP server (uvicorn): UI, query
API, MLflow's tracking API and OTLP/HTTP, whose writes go to the broker through the gateway. The sink
and the HTTP server share one store handle, because chDB allows one process per data path.

On Ctrl-C (or SIGTERM) it stops the demo, waits until the sink has written everything the broker
holds, commits, and only then stops the broker, whose data lives in memory. While it runs it watches
the broker's memory and, at the limit, starts a new broker generation (``embedded._memory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

log = logging.getLogger("tracehouse.up")
#: How often the broker's memory is sampled.
WATCH_INTERVAL_S = 2.0


@dataclass(frozen=True, slots=True)
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 5000
    kafka_port: int = 9092
    data_dir: Path = Path("./.tracehouse")
    partitions: int = 8
    topic_prefix: str | None = None
    demo: bool = False
    drain_timeout: float = 60.0
    inactivity_gap_ms: int = 30 * 60 * 1000
    max_duration_ms: int | None = None
    infer_sessions: bool = False
    auth_token: str | None = None
    retention_days: int = 30
    summary_retention_days: int = 0
    broker_memory_limit_mb: float = 1024.0


def run_up(opts: UpOptions) -> None:
    """Run until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # group joins and rebalances are routine here
    asyncio.run(_up(opts))


async def _up(opts: UpOptions) -> None:
    import uvicorn

    from tracehouse.app.embedded import TansuBroker, ensure_topics
    from tracehouse.app.server import AuthConfig, create_app
    from tracehouse.app.status import BrokerProbe, KafkaTarget, collect
    from tracehouse.gateway import Gateway, GatewayConfig, sink_waiter
    from tracehouse.schemas import DEFAULT_TOPIC_PREFIX, Topics
    from tracehouse.storage import Retention, Store, migrate, set_retention

    from ..embedded._memory import BrokerMemory
    from ..embedded._processors import EmbeddedProcessors, ProcessorOptions

    data_dir = opts.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    prefix = opts.topic_prefix if opts.topic_prefix is not None else DEFAULT_TOPIC_PREFIX
    topics = Topics(prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def new_broker() -> TansuBroker:
        return TansuBroker(port=opts.kafka_port, host="127.0.0.1", log_path=data_dir / "tansu.log").start()

    broker = new_broker()
    store: Store | None = None
    try:
        await ensure_topics(broker.bootstrap, topics, opts.partitions)
        store_uri = f"chdb://{data_dir / 'chdb'}"
        store = Store(store_uri)
        migrate(store)
        set_retention(store, Retention(opts.retention_days, opts.summary_retention_days))
        # The in-memory broker starts every run (and every generation) at offset 0 while the store
        # persists: each is a new broker epoch, by which the sink keys its ledger and tokens (after an
        # unclean stop it first reconciles sessions and rollups with the stored traces).
        options = ProcessorOptions(
            partitions=opts.partitions, inactivity_gap_ms=opts.inactivity_gap_ms,
            max_duration_ms=opts.max_duration_ms, infer_sessions=opts.infer_sessions,
            datadir=str(data_dir / "sessionizer"),
        )  # fmt: skip
        processors = EmbeddedProcessors(broker.bootstrap, topics, store, options)
        await processors.start()
        memory = BrokerMemory(pid=lambda: broker.pid, limit_mib=opts.broker_memory_limit_mb)

        # MLflow clients and OTLP exporters write through the gateway; reads wait on this process's sink:
        # the current generation's (``processors`` is looked up at each wait, not bound once).
        gateway = Gateway(
            GatewayConfig.resolve(bootstrap=broker.bootstrap, topic_prefix=prefix, sink_group=processors.group),
            commit_waiter=sink_waiter(lambda offsets, timeout_s: processors.wait_committed(offsets, timeout_s)),
        )
        await gateway.start()
        kafka = KafkaTarget(broker.bootstrap, topics, processors.group, processors.sessionizer_group)
        probe = BrokerProbe(memory.sample)

        async def status() -> Any:
            return await collect(store, kafka, probe)

        app = create_app(store, gateway=gateway, auth=AuthConfig.resolve(token=opts.auth_token),
                         manage_gateway=False, status=status)  # fmt: skip
        server = uvicorn.Server(
            uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning", lifespan="off")
        )
        server.capture_signals = _no_signals  # type: ignore[method-assign]  # we own SIGINT/SIGTERM
        server_task = asyncio.create_task(server.serve(), name="tracehouse-http")
        while not server.started:
            if server_task.done():
                await server_task
                raise RuntimeError(f"the HTTP server could not listen on {opts.host}:{opts.port}")
            await asyncio.sleep(0.05)

        url = f"http://{opts.host}:{opts.port}"
        click.echo(
            f"tracehouse is up\n"
            f"  Kafka bootstrap   {broker.bootstrap}   (export TRACEHOUSE_KAFKA_BOOTSTRAP={broker.bootstrap})\n"
            f"  traces topic      {topics.traces} ({opts.partitions} partitions), dead letters {topics.dlq}\n"
            f"  sessions topic    {topics.sessions} (session records, sunk into the sessions table)\n"
            f"  store             {store_uri}\n"
            f"  retention         {retention_text(opts.retention_days, opts.summary_retention_days)}\n"
            f"  broker memory     new generation at {opts.broker_memory_limit_mb:.0f} MiB (writes pause briefly)\n"
            f"  UI and API        {url}   (export TRACEHOUSE_URI={url})\n"
            f"  MLflow clients    export MLFLOW_TRACKING_URI={url}\n"
            f"  OTLP/HTTP         {url}/v1/traces\n"
            f"  health            tracehouse status --uri {url}\n"
            f"Press Ctrl-C to drain and stop.",
        )
        demo_thread = _start_demo(broker.bootstrap, prefix) if opts.demo else None

        async def new_generation() -> None:
            """The memory policy (``embedded._memory``): drain, replace the broker, start again."""
            nonlocal broker, processors
            log.warning("the embedded broker holds %.0f MiB (limit %.0f MiB): starting a new broker generation",
                        memory.rss or 0, memory.limit_mib)  # fmt: skip
            gateway.pause("the embedded broker is being replaced (memory limit)", retry_after_s=5)
            started = time.monotonic()
            drained, _ = await processors.stop_at_cut(opts.drain_timeout)
            if not drained:
                log.error("the drain before the new generation timed out; what was not stored is reconciled")
            else:
                log.info("drained to the cut in %.1f s", time.monotonic() - started)
            # Drained (or given up on): nothing left to read. Tansu waits 5 s for its clients on SIGTERM,
            # and every second here is one more the SDKs' replay must reach back.
            broker.stop(timeout=1.0 if drained else 5.0)
            broker = new_broker()
            await ensure_topics(broker.bootstrap, topics, opts.partitions)
            processors = EmbeddedProcessors(broker.bootstrap, topics, store, options)
            await processors.start()
            await gateway.resume(new_broker=True)
            memory.rolled_over()
            log.warning("broker generation %d is up; writes resumed", memory.rollovers + 1)

        while not stop.is_set():
            await _wait_first(stop, server_task, *processors.tasks, timeout_s=WATCH_INTERVAL_S)
            if not stop.is_set() and await asyncio.to_thread(memory.check) == "limit":
                await new_generation()
        click.echo("draining in-flight events into ClickHouse… (Ctrl-C again stops now, losing what is not drained)")

        def stop_now() -> None:
            click.echo("stopping without draining")
            broker.stop()
            os._exit(130)

        loop.add_signal_handler(signal.SIGINT, stop_now)
        if demo_thread is not None:
            demo_thread.join(timeout=opts.drain_timeout)
        # Stop taking writes first: everything the gateway acknowledged is then in the broker, drained below.
        server.should_exit = True
        await server_task
        await gateway.stop()
        drained, stats = await processors.stop(opts.drain_timeout)
        events = (stats.events_written, stats.events_rejected) if stats else (0, 0)
        click.echo(
            f"stopped: {events[0]} events written, {events[1]} dead-lettered"
            + ("" if drained else " (drain timed out: some events may not have been written)")
        )
    finally:
        if opts.demo:
            import tracehouse.producers as sdk

            await asyncio.to_thread(sdk.shutdown, 5.0)  # its producer would outlive the broker
        if store is not None:
            store.close()
        broker.stop()


def retention_text(raw_days: int, summary_days: int) -> str:
    def days(n: int) -> str:
        return "forever" if n == 0 else f"{n} days"

    return f"raw traces {days(raw_days)}, sessions and rollups {days(summary_days)}"


@contextlib.contextmanager
def _no_signals() -> Iterator[None]:
    yield


async def _wait_first(stop: asyncio.Event, *tasks: asyncio.Task[Any], timeout_s: float | None = None) -> None:
    """Until ``stop`` is set, a task ends (raising its error) or ``timeout_s`` passes."""
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    for task in done:
        if task is not waiter and task.exception() is not None:
            raise RuntimeError(f"{task.get_name()} failed: {task.exception()}")


def _start_demo(bootstrap: str, prefix: str) -> threading.Thread:
    import tracehouse.producers as sdk

    from ._demo import DemoPlan, run_demo

    def run() -> None:
        sdk.configure(kafka_bootstrap=bootstrap, topic_prefix=prefix)
        sent = asyncio.run(run_demo(DemoPlan()))
        sdk.flush(timeout=30)
        click.echo(f"demo: sent {sent} traces; try `tracehouse search` or open the UI")

    thread = threading.Thread(target=run, name="tracehouse-demo", daemon=True)
    thread.start()
    return thread
