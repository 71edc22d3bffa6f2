"""What is recorded for one trace: the :class:`TraceRecord` and its spans, :class:`LiveSpan` (recording)
and :class:`NoOpSpan` (tracing disabled).

Every method a user may call on a span is safe on the hot path: it never raises, and once the span has
ended further changes are ignored (the publisher thread may be reading it). Ending the root span
finishes the record: open child spans are closed and the record is handed to ``on_finish`` (which the
SDK points at the publisher; see ``_trace``). Nothing here does I/O or knows where records go.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Final

from tracehouse.schemas import SPAN_INPUTS, SPAN_OUTPUTS

from ._serialize import safe_repr, to_jsonable, truncate

_log = logging.getLogger("tracehouse")
_time_ns = time.time_ns

_STATUSES: Final = frozenset({"OK", "ERROR", "UNSET"})
_MISSING: Final[Any] = object()


class SpanType:
    """The span types MLflow knows (``span_type`` is free text; these are the conventional values)."""

    LLM: Final = "LLM"
    CHAT_MODEL: Final = "CHAT_MODEL"
    CHAIN: Final = "CHAIN"
    AGENT: Final = "AGENT"
    TOOL: Final = "TOOL"
    RETRIEVER: Final = "RETRIEVER"
    EMBEDDING: Final = "EMBEDDING"
    RERANKER: Final = "RERANKER"
    PARSER: Final = "PARSER"
    MEMORY: Final = "MEMORY"
    UNKNOWN: Final = "UNKNOWN"


class TraceRecord:
    """Everything recorded for one trace until its root span ends."""

    __slots__ = (
        "client_request_id",
        "experiment_id",
        "finished",
        "metadata",
        "on_finish",
        "request_preview",
        "response_preview",
        "root",
        "spans",
        "tags",
        "trace_id",
    )

    def __init__(
        self, trace_id: str, experiment_id: str, on_finish: Callable[[TraceRecord], None] | None = None
    ) -> None:
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
        #: Called once, with the record, when the root span ends.
        self.on_finish = on_finish

    def finish(self) -> None:
        """Called once, when the root span ends: close the spans left open, hand the record over."""
        if self.finished:
            return
        self.finished = True
        root = self.root
        end = root.end_time_ns if root is not None and root.end_time_ns is not None else _time_ns()
        for span in self.spans:
            if span.end_time_ns is None:
                span._force_end(end)
        if self.on_finish is not None:
            self.on_finish(self)


def exception_event_attributes(exc: BaseException) -> dict[str, Any]:
    """The OpenTelemetry ``exception`` event attributes of ``exc``."""
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        stack = ""
    return {
        "exception.type": type(exc).__name__,
        "exception.message": truncate(_exc_message(exc), 10_000),
        "exception.stacktrace": truncate(stack, 50_000),
    }


def _exc_message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return safe_repr(exc)


class LiveSpan:
    """A span being recorded. Get one from ``tracehouse.start_span`` or
    ``tracehouse.get_current_active_span()``; decorated functions create theirs automatically."""

    __slots__ = (
        "_attributes",
        "_events",
        "_status",
        "_status_message",
        "_trace",
        "end_time_ns",
        "name",
        "parent_id",
        "span_id",
        "span_type",
        "start_time_ns",
    )

    def __init__(
        self,
        trace: TraceRecord,
        span_id: str,
        parent_id: str | None,
        name: str,
        span_type: str,
        start_time_ns: int,
        attributes: dict[str, Any],
    ) -> None:
        self._trace = trace
        #: 16 lowercase hex characters.
        self.span_id = span_id
        #: The parent's span id, ``None`` for the root span of a trace.
        self.parent_id = parent_id
        self.name = name
        self.span_type = span_type
        self.start_time_ns = start_time_ns
        #: ``None`` while the span is open.
        self.end_time_ns: int | None = None
        self._attributes = attributes
        self._events: list[dict[str, Any]] | None = None
        self._status = "UNSET"
        self._status_message = ""

    # -- read side ---------------------------------------------------------------------------------

    @property
    def trace_id(self) -> str:
        """The id of the trace this span belongs to (``tr-`` + 32 hex)."""
        return self._trace.trace_id

    @property
    def parent_span_id(self) -> str | None:
        """Alias of :attr:`parent_id`."""
        return self.parent_id

    @property
    def status(self) -> str:
        """``"UNSET"`` while open (unless set), then ``"OK"`` or ``"ERROR"``."""
        return self._status

    @property
    def status_message(self) -> str:
        return self._status_message

    @property
    def inputs(self) -> Any:
        """The recorded (JSON-safe) inputs, or ``None``."""
        return self._attributes.get(SPAN_INPUTS)

    @property
    def outputs(self) -> Any:
        """The recorded (JSON-safe) outputs, or ``None``."""
        return self._attributes.get(SPAN_OUTPUTS)

    @property
    def attributes(self) -> dict[str, Any]:
        """A copy of the recorded attributes (inputs and outputs included)."""
        return dict(self._attributes)

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the recorded span events."""
        return list(self._events or ())

    def get_attribute(self, key: str) -> Any:
        """One recorded attribute, or ``None``."""
        return self._attributes.get(key)

    @property
    def is_recording(self) -> bool:
        """``True`` while the span is open and records changes."""
        return self.end_time_ns is None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, trace_id={self.trace_id!r}, span_id={self.span_id!r})"
        )

    # -- write side (never raises) -----------------------------------------------------------------

    def set_inputs(self, inputs: Any) -> None:
        """Record the span's inputs (``mlflow.spanInputs``), made JSON-safe and size-capped."""
        if self.end_time_ns is None:
            self._attributes[SPAN_INPUTS] = to_jsonable(inputs)

    def set_outputs(self, outputs: Any) -> None:
        """Record the span's outputs (``mlflow.spanOutputs``), made JSON-safe and size-capped."""
        if self.end_time_ns is None:
            self._attributes[SPAN_OUTPUTS] = to_jsonable(outputs)

    def set_attribute(self, key: str, value: Any) -> None:
        """Record one attribute (JSON-safe copy of ``value``)."""
        if self.end_time_ns is None:
            self._attributes[key if type(key) is str else str(key)] = to_jsonable(value)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Record several attributes."""
        if self.end_time_ns is not None:
            return
        try:
            for key, value in attributes.items():
                self.set_attribute(key, value)
        except Exception:
            _log.warning("tracehouse: set_attributes() needs a mapping, got %s", type(attributes).__name__)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp_ns: int | None = None
    ) -> None:
        """Record a point-in-time event in this span."""
        if self.end_time_ns is not None:
            return
        try:
            event: dict[str, Any] = {
                "name": truncate(str(name), 1000),
                "timestamp_ns": _time_ns() if timestamp_ns is None else max(int(timestamp_ns), 0),
            }
            if attributes:
                converted = to_jsonable(dict(attributes))
                event["attributes"] = converted if isinstance(converted, dict) else {"value": converted}
            if self._events is None:
                self._events = []
            self._events.append(event)
        except Exception:
            _log.warning("tracehouse: could not record span event %r", name, exc_info=True)

    def set_status(self, status: str, message: str = "") -> None:
        """Set ``"OK"``, ``"ERROR"`` or ``"UNSET"`` (case-insensitive; an enum's name works too)."""
        if self.end_time_ns is not None:
            return
        code = str(getattr(status, "name", status)).upper().removeprefix("STATUS_CODE_")
        if code not in _STATUSES:
            _log.warning("tracehouse: unknown span status %r ignored", status)
            return
        self._status = code
        self._status_message = truncate(str(message), 1000) if message else ""

    def record_exception(self, exception: BaseException) -> None:
        """Add an ``exception`` event (type, message, stack trace) and set the status to ERROR."""
        if self.end_time_ns is not None:
            return
        try:
            self.add_event("exception", exception_event_attributes(exception))
            self._status = "ERROR"
            self._status_message = truncate(f"{type(exception).__name__}: {_exc_message(exception)}", 1000)
        except Exception:
            _log.warning("tracehouse: could not record an exception", exc_info=True)

    def end(
        self,
        outputs: Any = _MISSING,
        attributes: Mapping[str, Any] | None = None,
        status: str | None = None,
        end_time_ns: int | None = None,
    ) -> None:
        """End the span (idempotent). Ending the root span finishes and publishes the trace.

        Spans opened with ``start_span``/``@trace`` end on their own; call this only for a span you
        manage by hand.
        """
        if self.end_time_ns is not None:
            return
        try:
            if outputs is not _MISSING:
                self.set_outputs(outputs)
            if attributes:
                self.set_attributes(attributes)
            if status is not None:
                self.set_status(status)
            if self._status == "UNSET":
                self._status = "OK"
            now = _time_ns() if end_time_ns is None else int(end_time_ns)
            self.end_time_ns = now if now >= self.start_time_ns else self.start_time_ns
            if self._trace.root is self:
                self._trace.finish()
        except Exception:
            _log.warning("tracehouse: could not end span %r", self.name, exc_info=True)

    def _force_end(self, end_time_ns: int) -> None:
        """End a span left open when its trace finished: status stays as it is (usually UNSET)."""
        if self.end_time_ns is None:
            self.end_time_ns = max(end_time_ns, self.start_time_ns)


class NoOpSpan(LiveSpan):
    """The span handed out while tracing is disabled: every method works and records nothing."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(TraceRecord("", "0"), "", None, "", "UNKNOWN", 0, {})
        self.end_time_ns = 0

    def end(self, *args: Any, **kwargs: Any) -> None:
        return None

    @property
    def is_recording(self) -> bool:
        return False
