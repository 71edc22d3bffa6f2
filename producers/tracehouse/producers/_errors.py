"""Errors the SDK raises on explicit API misuse. The tracing hot path never raises."""

from __future__ import annotations


class ImmutableMetadataError(ValueError):
    """An attempt to change trace metadata (or an immutable tag) after it was logged.

    Trace metadata, including the identity keys ``mlflow.trace.user`` and ``mlflow.trace.session``,
    is immutable once the trace is logged: set it with ``update_current_trace(metadata=...)`` while the
    trace is active. Tags stay mutable: use ``set_trace_tag`` / ``delete_trace_tag``.
    """
