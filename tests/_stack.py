"""The write-and-read HTTP server for a test: sink + gateway + app on one event loop in a thread,
over the real broker and a real chDB store (shared, as ``tracehouse up`` shares it)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import uvicorn

from tracehouse.app.embedded import TansuBroker, ensure_topics, free_port
from tracehouse.app.server import AuthConfig, create_app
from tracehouse.gateway import Gateway, GatewayConfig, sink_waiter
from tracehouse.processors import Sink, SinkConfig
from tracehouse.schemas import Topics
from tracehouse.storage import Store


@dataclass
class Stack:
    url: str
    sink: Sink
    gateway: Gateway


@contextmanager
def serving_stack(
    broker: TansuBroker,
    topics: Topics,
    store: Store,
    *,
    auth: AuthConfig | None = None,
    fence: Literal["group", "sink"] = "group",
    partitions: int = 4,
    ryw_timeout_s: float = 20.0,
) -> Iterator[Stack]:
    """Yield a running stack; stop the server and drain the sink afterwards."""
    asyncio.run(ensure_topics(broker.bootstrap, topics, partitions=partitions))
    group = f"sink-{uuid.uuid4().hex[:8]}"
    sink = Sink(SinkConfig.resolve(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, group_id=group,
                                   consume_sessions=False), store)  # fmt: skip
    config = GatewayConfig.resolve(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, sink_group=group,
                                   read_your_writes_timeout_s=ryw_timeout_s)  # fmt: skip
    gateway = Gateway(config, commit_waiter=sink_waiter(sink.wait_committed) if fence == "sink" else None)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, gateway=gateway, auth=auth), host="127.0.0.1",
                                           port=port, log_level="warning"))  # fmt: skip
    server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
    loop = asyncio.new_event_loop()

    async def main() -> None:
        sink_task = asyncio.ensure_future(sink.run())
        try:
            await server.serve()
        finally:
            sink.request_stop()
            await sink_task

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "the test server did not start"
    try:
        yield Stack(f"http://127.0.0.1:{port}", sink, gateway)
    finally:
        server.should_exit = True
        thread.join(60)
        loop.close()
