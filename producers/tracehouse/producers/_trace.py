"""A trace being recorded: its spans, metadata and tags, and the registry of active traces.

The root span's end finishes the trace: open child spans are closed, the trace leaves the registry
and the :class:`TraceState` itself is handed to the publisher, which builds and encodes the event in
its own thread.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ._context import remember_finished_trace
from ._ids import new_span_id, new_trace_id
from ._runtime import RUNTIME
from ._span import LiveSpan

_log = logging.getLogger("tracehouse")
_time_ns = time.time_ns

#: Traces whose root span is still open, by trace id (any thread may look one up).
ACTIVE_TRACES: dict[str, TraceState] = {}
#: Beyond this many open traces the oldest are forgotten by the registry (a root span that never
#: ends, e.g. an abandoned generator, must not leak): they still finish, but ``set_trace_tag`` on them
#: publishes a tag event instead of changing them in memory.
MAX_ACTIVE_TRACES = 100_000


class TraceState:
    """Everything recorded for one trace until its root span ends."""

    __slots__ = (
        "client_request_id",
        "experiment_id",
        "finished",
        "metadata",
        "request_preview",
        "response_preview",
        "root",
        "spans",
        "tags",
        "trace_id",
    )

    def __init__(self, trace_id: str, experiment_id: str) -> None:
        self.trace_id = trace_id
        self.experiment_id = experiment_id
        self.root: LiveSpan | None = None
        self.spans: list[LiveSpan] = []
        self.metadata: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.client_request_id: str | None = None
        self.request_preview: str | None = None
        self.response_preview: str | None = None
        self.finished = False

    def finish(self) -> None:
        """Called once, when the root span ends."""
        if self.finished:
            return
        self.finished = True
        ACTIVE_TRACES.pop(self.trace_id, None)
        root = self.root
        end = root.end_time_ns if root is not None and root.end_time_ns is not None else _time_ns()
        for span in self.spans:
            if span.end_time_ns is None:
                span._force_end(end)
        remember_finished_trace(self.trace_id)
        RUNTIME.submit(self)


def open_span(
    name: str, span_type: str, attributes: dict[str, Any], parent: LiveSpan | None, experiment_id: str
) -> LiveSpan:
    """A new span: a child of ``parent``, or the root of a new trace when there is no open parent.

    ``attributes`` is owned by the span from now on.
    """
    now = _time_ns()
    if parent is None or parent._trace.finished:
        state = TraceState(new_trace_id(), experiment_id)
        span = LiveSpan(state, new_span_id(), None, name, span_type, now, attributes)
        state.root = span
        if len(ACTIVE_TRACES) >= MAX_ACTIVE_TRACES:
            _forget_oldest()
        ACTIVE_TRACES[state.trace_id] = state
    else:
        state = parent._trace
        span = LiveSpan(state, new_span_id(), parent.span_id, name, span_type, now, attributes)
    state.spans.append(span)
    return span


def active_trace(trace_id: str) -> TraceState | None:
    """The trace with this id if its root span is still open."""
    state = ACTIVE_TRACES.get(trace_id)
    return state if state is not None and not state.finished else None


def _forget_oldest() -> None:
    try:
        for trace_id in list(ACTIVE_TRACES)[: max(MAX_ACTIVE_TRACES // 10, 1)]:
            ACTIVE_TRACES.pop(trace_id, None)
    except RuntimeError:  # pragma: no cover - resized by another thread meanwhile
        pass
    _log.warning("tracehouse: more than %d traces are open at once; forgetting the oldest", MAX_ACTIVE_TRACES)
