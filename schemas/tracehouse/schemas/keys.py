"""Well-known metadata, tag and attribute keys, and the identity aliases every component shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import orjson

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


#: The counts of a token-usage object (``mlflow.trace.tokenUsage``, ``mlflow.chat.tokenUsage``).
TOKEN_FIELDS: Final = ("input_tokens", "output_tokens", "total_tokens")
_U64_MAX: Final = 2**64 - 1


def sum_token_usage(usages: Iterable[Mapping[str, Any]]) -> tuple[int, int, int]:
    """``(input, output, total)`` summed over usage objects (non-negative integers only; a missing
    total is input + output), each capped to fit ``UInt64``: counts come from apps, and an absurd one
    must not make a whole batch's insert fail."""
    totals = [0, 0, 0]
    for usage in usages:
        for i, key in enumerate(TOKEN_FIELDS):
            v = usage.get(key)
            if isinstance(v, int) and v >= 0:
                totals[i] += v
    if not totals[2]:
        totals[2] = totals[0] + totals[1]
    return min(totals[0], _U64_MAX), min(totals[1], _U64_MAX), min(totals[2], _U64_MAX)


def trace_token_usage(metadata_usage: str | None, span_usages: Callable[[], Iterable[Any]]) -> tuple[int, int, int]:
    """A trace's ``(input, output, total)`` tokens: its ``mlflow.trace.tokenUsage`` metadata when that
    is a JSON object, else the sum of its spans' ``mlflow.chat.tokenUsage`` objects (``span_usages``
    is called only then: the processors decode spans only when they must)."""
    if metadata_usage:
        try:
            usage = orjson.loads(metadata_usage)
        except orjson.JSONDecodeError:
            usage = None
        if isinstance(usage, dict):
            return sum_token_usage([usage])
    return sum_token_usage(u for u in span_usages() if isinstance(u, Mapping))
