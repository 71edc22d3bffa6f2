"""MLflow's trace-logging requests as tracehouse events.

* ``StartTraceV3`` (sent when a trace ends, despite its name) carries the trace's info: it becomes a
  ``trace`` event without spans, plus one ``assessment`` event per assessment logged on the active
  trace.
* The ``traces.json`` upload carries the spans: it becomes ``spans`` events, idempotent per span.
* Tag and assessment calls become ``tag_set`` / ``tag_delete`` / ``assessment`` events.

Every event is validated against the schema here, so a bad request is refused with a 400 that says
what is wrong instead of reaching Kafka and the dead-letter topic.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import msgspec
import orjson

from tracehouse.schemas import (
    AssessmentEvent,
    SpansEvent,
    TagDeleteEvent,
    TagSetEvent,
    TraceEvent,
)
from tracehouse.schemas.errors import InvalidRequest
from tracehouse.schemas.kafka import MAX_ENVELOPE_BYTES
from tracehouse.schemas.mlflow import Assessment, TraceInfo
from tracehouse.schemas.mlflow import Span as QuerySpan

_SPAN_REQUEST_ID: Final = "mlflow.traceRequestId"
SIZE_STATS: Final = "mlflow.trace.sizeStats"
_MAX_PREVIEW: Final = 10_000

E = TypeVar("E")


def _convert(data: Mapping[str, Any], kind: type[E], what: str) -> E:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid {what}: {exc}") from None


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parse(from_dict: Callable[[Mapping[str, Any]], E], raw: Mapping[str, Any], what: str) -> E:
    """An MLflow entity from its JSON, or a 400 saying what is wrong with it."""
    try:
        return from_dict(raw)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidRequest(f"invalid {what}: {exc}") from None


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Sequence) and not isinstance(value, str):  # MLflow 2's [{"key", "value"}]
        value = {str(_object(kv, what).get("key")): kv.get("value") for kv in value}
    out: dict[str, str] = {}
    for k, v in _object(value, what).items():
        if v is None:
            continue
        out[str(k)] = v if isinstance(v, str) else orjson.dumps(v).decode()
    return out


def trace_info_events(body: Mapping[str, Any]) -> tuple[TraceEvent, list[AssessmentEvent]]:
    """A ``StartTraceV3`` body (``{"trace": {"trace_info": {...}}}``) as its trace event and the
    assessments logged with it."""
    trace = body.get("trace", body)
    raw = _object(_object(trace, "trace").get("trace_info") or trace.get("traceInfo") or trace, "trace_info")
    info = _parse(TraceInfo.from_dict, raw, "trace_info")
    if not info.trace_id:
        raise InvalidRequest("invalid trace_info: trace_id is required")
    state = info.state.value
    if state == "STATE_UNSPECIFIED":
        raise InvalidRequest("invalid trace_info: state must be OK, ERROR or IN_PROGRESS")
    data: dict[str, Any] = {
        "trace_id": info.trace_id,
        "experiment_id": info.experiment_id,
        "timestamp_ms": info.request_time,
        "execution_time_ms": info.execution_duration or 0,
        "state": state,
        "metadata": _strings(info.trace_metadata, "trace_metadata"),
        "tags": _strings(info.tags, "tags"),
    }
    if info.client_request_id is not None:
        data["client_request_id"] = str(info.client_request_id)
    if info.request_preview:
        data["request_preview"] = str(info.request_preview)[:_MAX_PREVIEW]
    if info.response_preview:
        data["response_preview"] = str(info.response_preview)[:_MAX_PREVIEW]
    event = _convert(data, TraceEvent, "trace_info")
    assessments = [assessment_event(a, info.trace_id, create_time_ms=info.request_time) for a in info.assessments]
    return event, assessments


def assessment_event(a: Assessment, trace_id: str, *, create_time_ms: int | None = None) -> AssessmentEvent:
    """One assessment as an event. A client-supplied id is kept; otherwise the id is derived from the
    assessment's content, so a retried create is stored once."""
    created = a.create_time_ms or create_time_ms or int(time.time() * 1000)
    data: dict[str, Any] = {
        "trace_id": a.trace_id or trace_id,
        "name": a.name,
        "kind": a.kind,
        "value": a.value,
        "create_time_ms": created,
        "source": {"source_type": a.source.source_type, "source_id": a.source.source_id},
        "valid": a.valid,
        "metadata": dict(a.metadata),
    }
    if a.rationale is not None:
        data["rationale"] = a.rationale
    if data["trace_id"] != trace_id:
        raise InvalidRequest(f"assessment.trace_id {data['trace_id']!r} does not match the trace {trace_id!r}")
    data["assessment_id"] = a.assessment_id or content_id(data)
    return _convert(data, AssessmentEvent, "assessment")


def content_id(data: Mapping[str, Any]) -> str:
    """``a-`` + 32 hex digits of the assessment's canonical JSON."""
    digest = hashlib.blake2b(orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=str), digest_size=16)
    return "a-" + digest.hexdigest()


def assessment_from_request(trace_id: str, body: Mapping[str, Any]) -> AssessmentEvent:
    """A ``CreateAssessment`` body (``{"assessment": {...}}``) as an event."""
    raw = _object(body.get("assessment"), "assessment")
    a = _parse(Assessment.from_dict, raw, "assessment")
    if not a.name:
        raise InvalidRequest("invalid assessment: assessment_name is required")
    if raw.get("feedback") is None and raw.get("expectation") is None:
        raise InvalidRequest("invalid assessment: one of feedback or expectation is required")
    return assessment_event(a, trace_id)


def tag_event(trace_id: str, body: Mapping[str, Any], *, delete: bool) -> TagSetEvent | TagDeleteEvent:
    """``SetTraceTag`` / ``DeleteTraceTag`` as an event, versioned by the server's clock."""
    key = body.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidRequest("key is required and must be a non-empty string")
    data: dict[str, Any] = {"trace_id": trace_id, "key": key, "timestamp_ns": time.time_ns()}
    if delete:
        return _convert(data, TagDeleteEvent, "tag")
    value = body.get("value")
    if not isinstance(value, str):
        raise InvalidRequest("value is required and must be a string")
    data["value"] = value
    return _convert(data, TagSetEvent, "tag")


def schema_span(span: QuerySpan) -> dict[str, Any]:
    """A parsed span as the plain data of a schema :class:`~tracehouse.schemas.Span`."""
    attributes = {k: v for k, v in span.attributes.items() if k != _SPAN_REQUEST_ID}
    out: dict[str, Any] = {
        "span_id": span.span_id,
        "name": span.name,
        "start_time_ns": span.start_time_ns,
        "end_time_ns": span.end_time_ns,
        "span_type": span.span_type,
        "status": span.status.value,
        "status_message": span.status_message,
        "attributes": attributes,
        "events": [{"name": e.name, "timestamp_ns": e.timestamp_ns, "attributes": e.attributes} for e in span.events],
    }
    if span.parent_id:
        out["parent_span_id"] = span.parent_id
    return out


def parse_spans(raw_spans: Any, what: str) -> list[QuerySpan]:
    if not isinstance(raw_spans, list):
        raise InvalidRequest(f"{what}: spans must be a list")
    out: list[QuerySpan] = []
    for i, raw in enumerate(raw_spans):
        try:
            out.append(QuerySpan.from_dict(_object(raw, f"{what}: spans[{i}]")))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InvalidRequest(f"{what}: spans[{i}] is not a span: {exc}") from None
    return out


def spans_events(
    trace_id: str,
    spans: Sequence[Mapping[str, Any]],
    *,
    experiment_id: str,
    timestamp_ms: int | None = None,
    user_id: str = "",
    session_id: str = "",
) -> list[SpansEvent]:
    """``spans`` (schema span data) of one trace as ``spans`` events of at most
    :data:`MAX_ENVELOPE_BYTES` each. A single span larger than that is refused."""
    base: dict[str, Any] = {"trace_id": trace_id, "experiment_id": experiment_id}
    if timestamp_ms is not None:
        base["timestamp_ms"] = timestamp_ms
    if user_id:
        base["user_id"] = user_id[:250]
    if session_id:
        base["session_id"] = session_id[:250]
    return [_convert({**base, "spans": chunk}, SpansEvent, "spans") for chunk in _chunks(spans)]


def _chunks(spans: Sequence[Mapping[str, Any]]) -> Iterator[list[Mapping[str, Any]]]:
    chunk: list[Mapping[str, Any]] = []
    size = 0
    for span in spans:
        n = len(orjson.dumps(span, default=str))
        if n > MAX_ENVELOPE_BYTES:
            raise InvalidRequest(
                f"span {span.get('span_id')!r} is {n} bytes of JSON; the limit is {MAX_ENVELOPE_BYTES}",
                status=413,
            )
        if chunk and size + n > MAX_ENVELOPE_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(span)
        size += n + 1
    if chunk:
        yield chunk


def artifact_spans(trace_id: str, body: bytes) -> list[dict[str, Any]]:
    """The spans of an uploaded ``traces.json`` (``{"spans": [...]}``) as schema span data. Spans of
    another trace are refused."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"traces.json is not valid JSON: {exc}") from None
    spans = parse_spans(_object(doc, "traces.json").get("spans") or [], "traces.json")
    for s in spans:
        if s.trace_id != trace_id:
            raise InvalidRequest(f"traces.json: span {s.span_id!r} belongs to trace {s.trace_id!r}, not {trace_id!r}")
    return [schema_span(s) for s in spans]
