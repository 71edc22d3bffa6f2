"""Test helpers: capture the SDK's events in memory instead of publishing them to Kafka.

::

    from tracehouse.producers.testing import capture_events

    def test_my_app() -> None:
        with capture_events() as events:
            my_traced_function()
        (trace,) = events.traces()
        assert trace["metadata"]["mlflow.trace.user"] == "user-1"
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from tracehouse.schemas import Event, decode_event

from ._lifecycle import configure, shutdown


class InMemoryExporter:
    """An ``exporter`` for :func:`tracehouse.configure` that keeps every event dict in a list."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[dict[str, Any]]:
        """All events so far, oldest first (a copy)."""
        with self._lock:
            return list(self._events)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The events whose ``type`` is ``kind`` (``trace``, ``tag_set``, ``tag_delete``, ``assessment``)."""
        return [e for e in self.events if e.get("type") == kind]

    def traces(self) -> list[dict[str, Any]]:
        """The ``trace`` events."""
        return self.of_type("trace")

    def decoded(self) -> list[Event]:
        """Every event encoded as on the wire and decoded and validated by the processors' decoder."""
        return [decode_event(orjson.dumps(e)) for e in self.events]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()


@contextmanager
def capture_events(**config: Any) -> Iterator[InMemoryExporter]:
    """Configure the SDK to export into a new :class:`InMemoryExporter` for the block, then shut it
    down. Extra keyword arguments go to :func:`tracehouse.configure`."""
    exporter = InMemoryExporter()
    configure(exporter=exporter, **config)
    try:
        yield exporter
    finally:
        shutdown()
