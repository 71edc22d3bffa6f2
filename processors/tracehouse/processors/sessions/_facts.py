"""The few fields of a trace the stateful processors need: never its spans."""

from __future__ import annotations

from typing import Final

import msgspec
import orjson

from tracehouse.schemas import TRACE_TOKEN_USAGE, resolve_identity


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


class _TraceHeader(msgspec.Struct):
    """A trace event decoded without its spans (msgspec skips fields a Struct does not declare)."""

    trace_id: str
    timestamp_ms: int
    execution_time_ms: int
    state: str
    experiment_id: str = "0"
    request_preview: str = ""
    response_preview: str = ""
    metadata: dict[str, str] = {}
    type: str = "trace"


_header_decoder: Final = msgspec.json.Decoder(_TraceHeader)


def _tokens(metadata: dict[str, str]) -> tuple[int, int, int]:
    raw = metadata.get(TRACE_TOKEN_USAGE)
    if not raw:
        return 0, 0, 0
    try:
        usage = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 0, 0, 0
    if not isinstance(usage, dict):
        return 0, 0, 0
    values = [usage.get(k) for k in ("input_tokens", "output_tokens", "total_tokens")]
    i, o, t = (v if isinstance(v, int) and v >= 0 else 0 for v in values)
    return i, o, t or i + o


def facts_from_line(line: bytes) -> TraceFacts | None:
    """Facts of a ``trace`` event line, or ``None`` for other event types. Raises
    ``msgspec.DecodeError`` / ``ValidationError`` for lines that are not events at all."""
    if b'"type":"trace"' not in line and b'"type": "trace"' not in line:
        return None
    header = _header_decoder.decode(line)
    if header.type != "trace":
        return None
    user, session = resolve_identity(header.metadata)
    i, o, t = _tokens(header.metadata)
    return TraceFacts(
        trace_id=header.trace_id, timestamp_ms=header.timestamp_ms, execution_time_ms=header.execution_time_ms,
        error=header.state == "ERROR", experiment_id=header.experiment_id, user_id=user, session_id=session,
        request_preview=header.request_preview, response_preview=header.response_preview,
        input_tokens=i, output_tokens=o, total_tokens=t,
    )  # fmt: skip
