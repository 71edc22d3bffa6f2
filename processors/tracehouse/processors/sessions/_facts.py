"""The few fields of a trace the stateful processors need: never its spans (except for token usage
that only spans carry)."""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from tracehouse.schemas import SPAN_TOKEN_USAGE, TRACE_ID_PATTERN, TRACE_TOKEN_USAGE, resolve_identity
from tracehouse.schemas.keys import trace_token_usage


class TraceFacts(msgspec.Struct, frozen=True):
    """One trace as the sessionizer and the user rollups see it."""

    trace_id: str
    timestamp_ms: int
    execution_time_ms: int
    error: bool
    experiment_id: str = "0"
    user_id: str | None = None
    session_id: str | None = None
    request_preview: str = ""
    response_preview: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


#: The bounds the sink validates (``TraceEvent``; times must fit ``Int64`` nanoseconds): a line outside
#: them is dead-lettered by the sink and must not reach sessions, rollups or the watermark either.
_MAX_MS: Final = (2**63 - 1) // 1_000_000
_Millis = Annotated[int, msgspec.Meta(ge=0, le=_MAX_MS)]


class _TraceHeader(msgspec.Struct):
    """A trace event decoded without its spans (msgspec skips fields a Struct does not declare)."""

    trace_id: Annotated[str, msgspec.Meta(pattern=TRACE_ID_PATTERN)]
    timestamp_ms: _Millis
    execution_time_ms: _Millis
    state: str
    experiment_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "0"
    request_preview: str = ""
    response_preview: str = ""
    metadata: dict[str, str] = {}
    type: str = "trace"


class _SpanUsage(msgspec.Struct):
    attributes: dict[str, Any] = {}
    parent_span_id: str | None = None


class _SpanUsages(msgspec.Struct):
    spans: list[_SpanUsage] = []


_header_decoder: Final = msgspec.json.Decoder(_TraceHeader)
_spans_decoder: Final = msgspec.json.Decoder(_SpanUsages)
_SPAN_USAGE_BYTES: Final = SPAN_TOKEN_USAGE.encode()
#: Longest user or session id the stateful processors use (the ``session`` / ``user_trace`` contracts).
MAX_ID_LENGTH: Final = 250


def _tokens(metadata: dict[str, str], line: bytes) -> tuple[int, int, int]:
    """The trace's token usage, by the rule the sink applies (:func:`tracehouse.schemas.keys.trace_token_usage`);
    the spans are decoded only when the trace has no usable usage of its own and its line names one."""

    def span_usages() -> list[Any]:
        if _SPAN_USAGE_BYTES not in line:
            return []
        return [s.attributes.get(SPAN_TOKEN_USAGE) for s in _spans_decoder.decode(line).spans]

    return trace_token_usage(metadata.get(TRACE_TOKEN_USAGE), span_usages)


def facts_from_line(line: bytes) -> TraceFacts | None:
    """Facts of a ``trace`` event line, or ``None`` for other event types. Raises
    ``msgspec.DecodeError`` / ``ValidationError`` for lines that are not events at all."""
    if b'"type":"trace"' not in line and b'"type": "trace"' not in line:
        return None
    header = _header_decoder.decode(line)
    if header.type != "trace":
        return None
    user, session = resolve_identity(header.metadata)
    if (user is None or session is None) and b'"spans"' in line:
        # identity may come from the root span's attributes (as the sink and the SDK resolve it)
        root = next((sp for sp in _spans_decoder.decode(line).spans if sp.parent_span_id is None), None)
        if root is not None and root.attributes:
            user, session = resolve_identity(header.metadata, root.attributes)
    if user is not None and len(user) > MAX_ID_LENGTH:
        user = None  # beyond what a fact or a session record may carry: treated as absent
    if session is not None and len(session) > MAX_ID_LENGTH:
        session = None
    i, o, t = _tokens(header.metadata, line)
    return TraceFacts(
        trace_id=header.trace_id, timestamp_ms=header.timestamp_ms, execution_time_ms=header.execution_time_ms,
        error=header.state == "ERROR", experiment_id=header.experiment_id, user_id=user, session_id=session,
        request_preview=header.request_preview, response_preview=header.response_preview,
        input_tokens=i, output_tokens=o, total_tokens=t,
    )  # fmt: skip
