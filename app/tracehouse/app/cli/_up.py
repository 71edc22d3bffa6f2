"""``tracehouse up``: the whole pipeline in one process on the embedded defaults.

Tansu broker (child process) → sink (asyncio task) → chDB store ← HTTP server (uvicorn): UI, query
API, MLflow's tracking API and OTLP/HTTP, whose writes go to the broker through the gateway. The sink
and the HTTP server share one store handle, because chDB allows one process per data path.

On Ctrl-C (or SIGTERM) it stops the demo, waits until the sink has written everything the broker
holds, commits, and only then stops the broker, whose data lives in memory.
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
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from tracehouse.processors import Sink

log = logging.getLogger("tracehouse.up")


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


def run_up(opts: UpOptions) -> None:
    """Run until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # group joins and rebalances are routine here
    asyncio.run(_up(opts))


async def _up(opts: UpOptions) -> None:
    import uvicorn

    from tracehouse.app.embedded import TansuBroker, ensure_topics
    from tracehouse.app.server import AuthConfig, create_app
    from tracehouse.processors import Sink, SinkConfig
    from tracehouse.schemas import DEFAULT_TOPIC_PREFIX, Topics
    from tracehouse.storage import Retention, StateTable, Store, migrate, set_retention

    data_dir = opts.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    prefix = opts.topic_prefix if opts.topic_prefix is not None else DEFAULT_TOPIC_PREFIX
    topics = Topics(prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    broker = TansuBroker(port=opts.kafka_port, host="127.0.0.1", log_path=data_dir / "tansu.log").start()
    store: Store | None = None
    try:
        await ensure_topics(broker.bootstrap, topics, opts.partitions)
        store_uri = f"chdb://{data_dir / 'chdb'}"
        store = Store(store_uri)
        migrate(store)
        set_retention(store, Retention(opts.retention_days, opts.summary_retention_days))
        # The in-memory broker starts every run at offset 0 while the store persists: each run is a new
        # broker epoch, by which the sink keys its ledger and tokens (and after an unclean stop it first
        # reconciles sessions and rollups with the stored traces).
        config = SinkConfig.resolve(
            bootstrap=broker.bootstrap, topic_prefix=prefix, store_uri=store_uri,
            inactivity_gap_ms=opts.inactivity_gap_ms, max_duration_ms=opts.max_duration_ms,
        )  # fmt: skip
        group = config.group_id
        sink = Sink(config, store)
        sink_task = asyncio.create_task(sink.run(), name="tracehouse-sink")

        from tracehouse.processors.sessions import SessionizerConfig, run_sessionizer

        sessions_stop = asyncio.Event()
        sessionizer_config = SessionizerConfig.resolve(
            bootstrap=broker.bootstrap, topic_prefix=prefix, partitions=opts.partitions,
            rollup_partitions=opts.partitions, inactivity_gap_ms=opts.inactivity_gap_ms,
            max_duration_ms=opts.max_duration_ms, infer_sessions=opts.infer_sessions,
            datadir=str(data_dir / "sessionizer"),
        )  # fmt: skip
        # It shares the store: it continues the sessions a previous run left open, and reloads the ones it
        # evicted when they get a late turn.
        sessions_task = asyncio.create_task(
            run_sessionizer(sessionizer_config, sessions_stop, store=store), name="tracehouse-sessionizer"
        )

        from tracehouse.gateway import Gateway, GatewayConfig, sink_waiter

        # MLflow clients and OTLP exporters write through the gateway; reads wait on this very sink.
        gateway = Gateway(
            GatewayConfig.resolve(bootstrap=broker.bootstrap, topic_prefix=prefix, sink_group=group),
            commit_waiter=sink_waiter(sink.wait_committed),
        )
        await gateway.start()
        app = create_app(store, gateway=gateway, auth=AuthConfig.resolve(token=opts.auth_token), manage_gateway=False)
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
            f"  UI and API        {url}   (export TRACEHOUSE_URI={url})\n"
            f"  MLflow clients    export MLFLOW_TRACKING_URI={url}\n"
            f"  OTLP/HTTP         {url}/v1/traces\n"
            f"Press Ctrl-C to drain and stop.",
        )
        demo_thread = _start_demo(broker.bootstrap, prefix) if opts.demo else None

        await _wait_first(stop, sink_task, server_task, sessions_task)
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
        drained = await _drain(sink, opts.drain_timeout)
        # The sessionizer's final flush emits the last session records; the sink then writes them.
        sessions_stop.set()
        await asyncio.wait_for(sessions_task, opts.drain_timeout)
        drained = await _drain(sink, opts.drain_timeout) and drained
        await sink.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await sink_task
        if drained:  # sessions and rollups now equal the stored traces: the next start need not reconcile
            StateTable(store).mark_consistent()
        stats = sink.stats()
        click.echo(
            f"stopped: {stats.events_written} events written, {stats.events_rejected} dead-lettered"
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


async def _wait_first(stop: asyncio.Event, *tasks: asyncio.Task[object]) -> None:
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    for task in done:
        if task is not waiter and task.exception() is not None:
            raise RuntimeError(f"{task.get_name()} failed: {task.exception()}")


async def _drain(sink: Sink, limit_s: float) -> bool:
    """Wait until the sink has committed everything the broker holds.

    The SDK is flushed first (its events are acknowledged), then the sink must report itself caught up
    on a fetch made after that: its fetches long-poll for at most 0.5 s, so a check passing a second
    after the flush covers every acknowledged event.
    """
    import tracehouse.producers as sdk

    await asyncio.to_thread(sdk.flush, 10.0)
    flushed = time.monotonic()
    deadline = flushed + limit_s
    while time.monotonic() < deadline:
        if time.monotonic() - flushed > 1.0 and sink.caught_up():
            return True
        await asyncio.sleep(0.1)
    return False


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
