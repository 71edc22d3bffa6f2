"""The context API: ``start_span``, ``update_current_trace``, ``get_current_active_span``,
``get_last_active_trace_id``. None of it raises: misuse is logged on the ``tracehouse`` logger."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import Any, Final

from tracehouse.schemas import IMMUTABLE_TAGS, TRACE_SESSION, TRACE_USER

from ._context import CURRENT_SPAN, deactivate, last_trace_id
from ._record import LiveSpan, NoOpSpan, SpanType
from ._runtime import RUNTIME
from ._tags import IDENTITY_KEYS
from ._trace import open_span

_log = logging.getLogger("tracehouse")
_NO_ARG: Final[Any] = object()
_NOOP: NoOpSpan | None = None


def _noop_span() -> NoOpSpan:
    global _NOOP
    if _NOOP is None:
        _NOOP = NoOpSpan()
    return _NOOP


class SpanScope:
    """What :func:`start_span` returns: a (sync or async) context manager yielding the span."""

    __slots__ = ("_attributes", "_inputs", "_name", "_span", "_span_type", "_token")

    def __init__(self, name: str, span_type: str, attributes: Mapping[str, Any] | None, inputs: Any) -> None:
        self._name = name
        self._span_type = span_type
        self._attributes = attributes
        self._inputs = inputs
        self._span: LiveSpan | None = None
        self._token: Token[LiveSpan | None] | None = None

    def __enter__(self) -> LiveSpan:
        enabled = RUNTIME.enabled
        if enabled is None:
            enabled = RUNTIME.ensure().enabled
        if not enabled:
            return _noop_span()
        try:
            config = RUNTIME.config or RUNTIME.ensure()
            span = open_span(
                str(self._name), str(self._span_type), {}, CURRENT_SPAN.get(), config.experiment_id
            )
            if self._attributes:
                span.set_attributes(self._attributes)
            if self._inputs is not _NO_ARG:
                span.set_inputs(self._inputs)
            self._token = CURRENT_SPAN.set(span)
            self._span = span
            return span
        except Exception:
            _log.warning("tracehouse: could not start span %r", self._name, exc_info=True)
            return _noop_span()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span, token = self._span, self._token
        self._span = self._token = None
        if span is None or token is None:
            return
        try:
            deactivate(token, span)
        except Exception:  # pragma: no cover - defensive
            _log.debug("tracehouse: could not restore the active span", exc_info=True)
        if exc is not None:
            span.record_exception(exc)
        span.end()

    async def __aenter__(self) -> LiveSpan:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def start_span(
    name: str = "span",
    span_type: str = SpanType.UNKNOWN,
    attributes: Mapping[str, Any] | None = None,
    *,
    inputs: Any = _NO_ARG,
) -> SpanScope:
    """Open a span for a block of code, like ``mlflow.start_span``::

        with tracehouse.start_span("retrieve", span_type="RETRIEVER") as span:
            span.set_inputs({"query": q})
            docs = search(q)
            span.set_outputs(docs)

    The span is a child of the active span, or the root of a new trace when there is none. An
    exception leaving the block is recorded (status ERROR, ``exception`` event) and propagates.
    Works with ``async with`` too. While tracing is disabled the span is a :class:`NoOpSpan`.
    """
    return SpanScope(name, span_type, attributes, inputs)


def get_current_active_span() -> LiveSpan | None:
    """The span active in this context (thread / asyncio task), or ``None``."""
    return CURRENT_SPAN.get()


def get_last_active_trace_id(thread_local: bool = False) -> str | None:
    """The id of the last trace that finished, like ``mlflow.get_last_active_trace_id``.

    ``thread_local=False`` (MLflow's default): the last in the whole process. ``thread_local=True``:
    the last finished in this context (this thread, or this asyncio task), safe under concurrency.
    """
    return last_trace_id(thread_local)


def update_current_trace(
    *,
    tags: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    client_request_id: str | None = None,
    request_preview: str | None = None,
    response_preview: str | None = None,
    user: str | None = None,
    session_id: str | None = None,
) -> None:
    """Add to the active trace (keyword arguments only), like ``mlflow.update_current_trace``.

    * ``metadata``: merged into the trace's metadata, immutable once the trace is logged. The user
      and session of a trace are ``mlflow.trace.user`` / ``mlflow.trace.session`` (``user=`` and
      ``session_id=`` are shortcuts for them). Values are stored as strings.
    * ``tags``: merged into the trace's (mutable) tags. Immutable tags are ignored with a warning.
    * ``client_request_id``, ``request_preview``, ``response_preview``: replace the trace's values.

    Outside a trace it does nothing and logs a warning on the ``tracehouse`` logger (a log record,
    not a Python warning, so it never raises even under ``-W error``). Silent while tracing is disabled.
    """
    span = CURRENT_SPAN.get()
    if span is None or span.end_time_ns is not None:
        enabled = RUNTIME.enabled
        if enabled is None:
            enabled = RUNTIME.ensure().enabled
        if enabled:
            _log.warning("tracehouse: update_current_trace() called outside of a trace; ignored")
        return
    state = span._trace
    try:
        if metadata:
            meta = state.metadata
            for key, value in metadata.items():
                meta[key if type(key) is str else str(key)] = value if type(value) is str else str(value)
        if user is not None:
            state.metadata[TRACE_USER] = str(user)
        if session_id is not None:
            state.metadata[TRACE_SESSION] = str(session_id)
        if tags:
            for key, value in tags.items():
                k = key if type(key) is str else str(key)
                if k in IMMUTABLE_TAGS or k in IDENTITY_KEYS:
                    _log.warning("tracehouse: tag %r is reserved (immutable or metadata); ignored", k)
                    continue
                state.tags[k] = value if type(value) is str else str(value)
        if client_request_id is not None:
            state.client_request_id = str(client_request_id)
        if request_preview is not None:
            state.request_preview = str(request_preview)
        if response_preview is not None:
            state.response_preview = str(response_preview)
    except Exception:
        _log.warning("tracehouse: update_current_trace() failed", exc_info=True)
