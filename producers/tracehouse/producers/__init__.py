"""The tracehouse tracing SDK: MLflow-style tracing of GenAI apps, published to Kafka.

::

    import tracehouse

    @tracehouse.trace
    def chat_completion(user_id: str, session_id: str, message: str) -> str:
        tracehouse.update_current_trace(
            metadata={"mlflow.trace.user": user_id, "mlflow.trace.session": session_id},
            client_request_id="req-abc-123", tags={"env": "prod"})
        with tracehouse.start_span("retrieve", span_type="RETRIEVER") as span:
            ...
        return generate_response(message)

Importing starts nothing. :func:`configure` resolves the configuration and starts the publisher
thread, so that no traced call pays for it; without it, the environment (``TRACEHOUSE_*``) is resolved
on the first traced call and the publisher thread starts with the first finished trace. Tracing never
raises into the application; explicit misuse of the tag and feedback APIs does
(:class:`ImmutableMetadataError`, :class:`ValueError`).
"""

from tracehouse.schemas.errors import ImmutableMetadataError
from tracehouse.schemas.mlflow import AssessmentSource, AssessmentSourceType

from ._api import (
    SpanScope,
    get_current_active_span,
    get_last_active_trace_id,
    start_span,
    update_current_trace,
)
from ._config import TracehouseConfig
from ._decorator import trace
from ._feedback import log_expectation, log_feedback
from ._lifecycle import configure, flush, get_config, shutdown, stats
from ._middleware import TracehouseMiddleware
from ._publishers import PublisherStats
from ._record import LiveSpan, NoOpSpan, SpanType
from ._tags import delete_trace_tag, set_trace_tag

__all__ = [
    "AssessmentSource",
    "AssessmentSourceType",
    "ImmutableMetadataError",
    "LiveSpan",
    "NoOpSpan",
    "PublisherStats",
    "SpanScope",
    "SpanType",
    "TracehouseConfig",
    "TracehouseMiddleware",
    "configure",
    "delete_trace_tag",
    "flush",
    "get_config",
    "get_current_active_span",
    "get_last_active_trace_id",
    "log_expectation",
    "log_feedback",
    "set_trace_tag",
    "shutdown",
    "start_span",
    "stats",
    "trace",
    "update_current_trace",
]
