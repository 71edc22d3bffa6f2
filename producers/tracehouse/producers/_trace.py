"""Open a span (the root of a new trace, or a child of an open one) and keep the registry of the traces
whose root span is still open.

When a root span ends its :class:`~._record.TraceRecord` leaves the registry, becomes the last
finished trace of its context, and is handed to the runtime's publisher, which builds and encodes the
event in its own thread.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ._context import remember_finished_trace
from ._ids import new_span_id, new_trace_id
from ._record import LiveSpan, TraceRecord
from ._runtime import RUNTIME

_log = logging.getLogger("tracehouse")
_time_ns = time.time_ns

#: Traces whose root span is still open, by trace id (any thread may look one up).
ACTIVE_TRACES: dict[str, TraceRecord] = {}
#: Beyond this many open traces the oldest are forgotten by the registry (a root span that never
#: ends, e.g. an abandoned generator, must not leak): they still finish, but ``set_trace_tag`` on them
#: publishes a tag event instead of changing them in memory.
MAX_ACTIVE_TRACES = 100_000


def _finished(record: TraceRecord) -> None:
    ACTIVE_TRACES.pop(record.trace_id, None)
    remember_finished_trace(record.trace_id)
    RUNTIME.submit(record)


def open_span(
    name: str, span_type: str, attributes: dict[str, Any], parent: LiveSpan | None, experiment_id: str
) -> LiveSpan:
    """A new span: a child of ``parent``, or the root of a new trace when there is no open parent.

    ``attributes`` is owned by the span from now on.
    """
    now = _time_ns()
    if parent is None or parent._trace.finished:
        record = TraceRecord(new_trace_id(), experiment_id, _finished)
        span = LiveSpan(record, new_span_id(), None, name, span_type, now, attributes)
        record.root = span
        if len(ACTIVE_TRACES) >= MAX_ACTIVE_TRACES:
            _forget_oldest()
        ACTIVE_TRACES[record.trace_id] = record
    else:
        record = parent._trace
        span = LiveSpan(record, new_span_id(), parent.span_id, name, span_type, now, attributes)
    record.spans.append(span)
    return span


def active_trace(trace_id: str) -> TraceRecord | None:
    """The trace with this id if its root span is still open."""
    record = ACTIVE_TRACES.get(trace_id)
    return record if record is not None and not record.finished else None


def _forget_oldest() -> None:
    try:
        for trace_id in list(ACTIVE_TRACES)[: max(MAX_ACTIVE_TRACES // 10, 1)]:
            ACTIVE_TRACES.pop(trace_id, None)
    except RuntimeError:  # pragma: no cover - resized by another thread meanwhile
        pass
    _log.warning("tracehouse: more than %d traces are open at once; forgetting the oldest", MAX_ACTIVE_TRACES)
