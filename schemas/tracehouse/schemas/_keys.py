"""Well-known metadata, tag and attribute keys, and the identity aliases every component shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

TRACE_USER: Final = "mlflow.trace.user"
TRACE_SESSION: Final = "mlflow.trace.session"
TRACE_TOKEN_USAGE: Final = "mlflow.trace.tokenUsage"
TRACE_SCHEMA_VERSION: Final = "mlflow.trace_schema.version"
TRACE_INPUTS: Final = "mlflow.traceInputs"
TRACE_OUTPUTS: Final = "mlflow.traceOutputs"
TRACE_NAME_TAG: Final = "mlflow.traceName"

SPAN_TYPE: Final = "mlflow.spanType"
SPAN_INPUTS: Final = "mlflow.spanInputs"
SPAN_OUTPUTS: Final = "mlflow.spanOutputs"
SPAN_FUNCTION_NAME: Final = "mlflow.spanFunctionName"
SPAN_TOKEN_USAGE: Final = "mlflow.chat.tokenUsage"

#: Keys that name the user of a trace, in order of precedence.
USER_KEYS: Final[tuple[str, ...]] = (TRACE_USER, "user.id")
#: Keys that name the session (multi-turn conversation) of a trace, in order of precedence.
SESSION_KEYS: Final[tuple[str, ...]] = (TRACE_SESSION, "session.id", "gen_ai.conversation.id")

#: Metadata is immutable once a trace is logged. These tags are immutable too (MLflow refuses them).
IMMUTABLE_TAGS: Final[frozenset[str]] = frozenset(
    {
        "mlflow.user",
        "mlflow.artifactLocation",
        "mlflow.trace.spansLocation",
        "mlflow.trace.archiveLocation",
        "mlflow.trace.archivalFailure",
    }
)


def _first(sources: tuple[Mapping[str, object], ...], keys: tuple[str, ...]) -> str | None:
    for source in sources:
        for key in keys:
            value = source.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def resolve_identity(
    metadata: Mapping[str, str], root_attributes: Mapping[str, object] | None = None
) -> tuple[str | None, str | None]:
    """Return ``(user_id, session_id)`` of a trace.

    Trace metadata wins over the root span's attributes; within each, ``mlflow.trace.*`` wins over
    the OpenTelemetry aliases ``user.id``, ``session.id`` and ``gen_ai.conversation.id``.
    """
    sources: tuple[Mapping[str, object], ...] = (
        (metadata,) if root_attributes is None else (metadata, root_attributes)
    )
    return _first(sources, USER_KEYS), _first(sources, SESSION_KEYS)
