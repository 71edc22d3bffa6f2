"""``tracehouse up``: the whole pipeline in one process on the embedded defaults.

Tansu broker (child process) → sink (asyncio task) → chDB store ← HTTP query API and UI (uvicorn).
The sink and the HTTP API share one store handle, because chDB allows one process per data path.

On Ctrl-C (or SIGTERM) it stops the demo, waits until the sink has written everything the broker
holds, commits, and only then stops the broker, whose data lives in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
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


def run_up(opts: UpOptions) -> None:
    """Run until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_up(opts))


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: int(off) for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def _up(opts: UpOptions) -> None:
    import uvicorn

    from tracehouse.embedded import TansuBroker, ensure_topics
    from tracehouse.processors import Sink, SinkConfig
    from tracehouse.schemas import DEFAULT_TOPIC_PREFIX, Topics
    from tracehouse.storage import Store, migrate

    from .._server import create_app

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
        sink = Sink(SinkConfig.resolve(bootstrap=broker.bootstrap, topic_prefix=prefix, store_uri=store_uri), store)
        sink_task = asyncio.create_task(sink.run(), name="tracehouse-sink")

        server = uvicorn.Server(
            uvicorn.Config(create_app(store), host=opts.host, port=opts.port, log_level="warning", lifespan="off")
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
            f"  store             {store_uri}\n"
            f"  UI and API        {url}   (export TRACEHOUSE_URI={url})\n"
            f"Press Ctrl-C to drain and stop.",
        )
        demo_thread = _start_demo(broker.bootstrap, prefix) if opts.demo else None

        await _wait_first(stop, sink_task, server_task)
        click.echo("draining in-flight events into ClickHouse…")
        if demo_thread is not None:
            demo_thread.join(timeout=opts.drain_timeout)
        drained = await _drain(sink, broker.bootstrap, topics.traces, opts.drain_timeout)
        await sink.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await sink_task
        server.should_exit = True
        await server_task
        stats = sink.stats()
        click.echo(
            f"stopped: {stats.events_written} events written, {stats.events_rejected} dead-lettered"
            + ("" if drained else " (drain timed out: some events may not have been written)")
        )
    finally:
        if store is not None:
            store.close()
        broker.stop()


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


async def _drain(sink: Sink, bootstrap: str, topic: str, limit_s: float) -> bool:
    """Wait until the sink committed everything the traces topic held when draining started."""
    import tracehouse

    await asyncio.to_thread(tracehouse.flush, 10.0)
    ends = await _end_offsets(bootstrap, topic)
    last = {(topic, p): end - 1 for p, end in ends.items() if end > 0}  # the last record of each partition
    return await sink.wait_committed(last, timeout_s=limit_s)


def _start_demo(bootstrap: str, prefix: str) -> threading.Thread:
    import tracehouse

    from ._demo import DemoPlan, run_demo

    def run() -> None:
        tracehouse.configure(kafka_bootstrap=bootstrap, topic_prefix=prefix)
        sent = asyncio.run(run_demo(DemoPlan()))
        tracehouse.flush(timeout=30)
        click.echo(f"demo: sent {sent} traces; try `tracehouse search` or open the UI")

    thread = threading.Thread(target=run, name="tracehouse-demo", daemon=True)
    thread.start()
    return thread
