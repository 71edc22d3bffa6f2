"""The active span, per execution context.

A :class:`contextvars.ContextVar`, so the active span follows ``await`` and is inherited by asyncio
tasks created inside a span (they become its children), while a new thread starts with no active span
(its first span starts a new trace), as in OpenTelemetry and MLflow.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from ._record import LiveSpan

CURRENT_SPAN: ContextVar[LiveSpan | None] = ContextVar("tracehouse_current_span", default=None)
_LAST_TRACE_ID: ContextVar[str | None] = ContextVar("tracehouse_last_trace_id", default=None)


class _Last:
    __slots__ = ("trace_id",)

    def __init__(self) -> None:
        self.trace_id: str | None = None


_last = _Last()


def current_span() -> LiveSpan | None:
    """The active span of this context, if any."""
    return CURRENT_SPAN.get()


def activate(span: LiveSpan) -> Token[LiveSpan | None]:
    """Make ``span`` the active span; undo with :func:`deactivate`."""
    return CURRENT_SPAN.set(span)


def deactivate(token: Token[LiveSpan | None], span: LiveSpan) -> None:
    """Restore the span that was active before ``activate``. Tolerates a token from another context
    (a span entered in one task and exited in another): then the span's parent is simply restored."""
    try:
        CURRENT_SPAN.reset(token)
    except (ValueError, RuntimeError):
        if CURRENT_SPAN.get() is span:
            CURRENT_SPAN.set(token.old_value if isinstance(token.old_value, LiveSpan) else None)


def remember_finished_trace(trace_id: str) -> None:
    """Record the last finished trace, process-wide and for this context."""
    _last.trace_id = trace_id
    _LAST_TRACE_ID.set(trace_id)


def last_trace_id(thread_local: bool) -> str | None:
    """The last finished trace id: of this context (thread / asyncio task) or of the process."""
    return _LAST_TRACE_ID.get() if thread_local else _last.trace_id
