"""Serve a store's HTTP API from a uvicorn thread for a test (real sockets, real client)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tracehouse.app.embedded import free_port
from tracehouse.app.server import create_app
from tracehouse.storage import Store


@contextmanager
def serving(store: Store, app: Any = None) -> Iterator[str]:
    """Yield the base URL of ``app`` (default ``create_app(store)``) served on a free port; stop it afterwards."""
    port = free_port()
    app = app if app is not None else create_app(store)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
