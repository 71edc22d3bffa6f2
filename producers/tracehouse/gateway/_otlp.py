"""OTLP/HTTP trace exports (``POST /v1/traces``) as tracehouse events.

Accepts ``application/x-protobuf`` and ``application/json`` bodies, plain or ``gzip`` / ``deflate``
encoded, with OTLP/JSON's hex ids or protobuf JSON's base64 ids. Spans are grouped by trace:

* a trace whose root span is in the export becomes one ``trace`` event carrying the spans of that
  export: its time, duration and state come from the root span; its user and session from the
  attributes ``mlflow.trace.user`` / ``user.id`` / ``enduser.id`` and ``mlflow.trace.session`` /
  ``session.id`` / ``gen_ai.conversation.id`` (root span first, then the other spans, then the
  resource); its name from the root span; the resource's ``service.name`` becomes a tag;
* spans of a trace whose root is not in the export become ``spans`` events, stored once per span
  id, so exports may arrive in any order and be retried;
* spans an MLflow client exported (they carry ``mlflow.traceRequestId``) only ever become ``spans``
  events: that client sends the trace's record itself (``StartTraceV3``), with the metadata, tags
  and client request id a root span does not have, and the first record of a trace wins.

A trace that fails validation is refused alone (OTLP partial success); the others are accepted.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson

from tracehouse.schemas import Event, TraceEvent, keys
from tracehouse.schemas.errors import InvalidRequest
from tracehouse.schemas.kafka import MAX_ENVELOPE_BYTES
from tracehouse.schemas.mlflow import Span as QuerySpan
from tracehouse.schemas.mlflow import from_key_values

from ._mlflow import SIZE_STATS, parse_spans, schema_span, spans_events

#: Decompressed bodies larger than this are refused (a small gzip body can expand enormously).
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"

_USER_KEYS: Final = (keys.TRACE_USER, "user.id", "enduser.id")
_SESSION_KEYS: Final = (keys.TRACE_SESSION, "session.id", "gen_ai.conversation.id")
_SPAN_REQUEST_ID: Final = "mlflow.traceRequestId"
_METADATA_CAP: Final = 250  # MLflow truncates traceInputs / traceOutputs to 250 characters
_PREVIEW_CAP: Final = 1000


@dataclass(slots=True)
class OtlpBatch:
    """What one export became: events to publish, and how many spans were refused and why."""

    events: list[Event] = field(default_factory=list)
    spans: int = 0
    rejected_spans: int = 0
    errors: list[str] = field(default_factory=list)


def decompress(body: bytes, content_encoding: str | None) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate", "x-gzip"):
        raise InvalidRequest(f"unsupported Content-Encoding {content_encoding!r} (use gzip, deflate or none)",
                             status=415)  # fmt: skip
    # wbits 47 accepts gzip and zlib headers; raw deflate (wbits -15) is the fallback for "deflate".
    for wbits in (47, -15):
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, MAX_BODY_BYTES + 1)
        except zlib.error:
            continue
        if len(out) > MAX_BODY_BYTES:
            raise InvalidRequest(f"decompressed body exceeds {MAX_BODY_BYTES} bytes", status=413)
        return out
    raise InvalidRequest(f"body is not valid {encoding} data")


def parse_request(body: bytes, content_type: str | None) -> Mapping[str, Any]:
    """An ``ExportTraceServiceRequest`` as JSON-shaped data (camelCase names)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == PROTOBUF:
        from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
        from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        try:
            message = ExportTraceServiceRequest.FromString(body)
        except DecodeError as exc:
            raise InvalidRequest(f"body is not an OTLP ExportTraceServiceRequest: {exc}") from None
        parsed: dict[str, Any] = MessageToDict(message)
        return parsed
    if media == JSON:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidRequest("body must be an OTLP/JSON ExportTraceServiceRequest object")
        return doc
    # OTLP/HTTP: "an unsupported Content-Type ... MUST respond with HTTP 415 Unsupported Media Type".
    raise InvalidRequest(f"Invalid Content-Type: {content_type}. Expected: {PROTOBUF} or {JSON}", status=415)


def _attributes(obj: Mapping[str, Any]) -> dict[str, Any]:
    return from_key_values(obj.get("attributes"))


def _first(sources: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> str:
    for source in sources:
        for key in keys:
            value = source.get(key)
            if isinstance(value, str) and value:
                return value
    return ""


def _text(value: Any, cap: int) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= cap else text[: cap - 3] + "..."


def _token_usage(spans: Sequence[QuerySpan]) -> str | None:
    totals = [0, 0]
    seen = False
    for s in spans:
        usage = s.attributes.get(keys.SPAN_TOKEN_USAGE)
        if isinstance(usage, Mapping):
            pairs = (usage.get("input_tokens"), usage.get("output_tokens"))
        else:
            pairs = (s.attributes.get("gen_ai.usage.input_tokens"), s.attributes.get("gen_ai.usage.output_tokens"))
        for i, v in enumerate(pairs):
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                totals[i] += v
                seen = True
    if not seen:
        return None
    return orjson.dumps(
        {"input_tokens": totals[0], "output_tokens": totals[1], "total_tokens": totals[0] + totals[1]}
    ).decode()


def _trace_event(
    trace_id: str, spans: list[QuerySpan], root: QuerySpan, resource: Mapping[str, Any], experiment_id: str
) -> TraceEvent:
    others = [s.attributes for s in spans if s is not root]
    sources = [root.attributes, *others, resource]
    metadata: dict[str, str] = {keys.TRACE_SCHEMA_VERSION: "3"}
    if user := _first(sources, _USER_KEYS):
        metadata[keys.TRACE_USER] = user
    if session := _first(sources, _SESSION_KEYS):
        metadata[keys.TRACE_SESSION] = session
    inputs = root.attributes.get(keys.SPAN_INPUTS, root.attributes.get("input.value"))
    outputs = root.attributes.get(keys.SPAN_OUTPUTS, root.attributes.get("output.value"))
    metadata[keys.TRACE_INPUTS] = _text(inputs, _METADATA_CAP)
    metadata[keys.TRACE_OUTPUTS] = _text(outputs, _METADATA_CAP)
    if usage := _token_usage(spans):
        metadata[keys.TRACE_TOKEN_USAGE] = usage
    tags = {keys.TRACE_NAME_TAG: root.name[:8000]}
    service = resource.get("service.name")
    if isinstance(service, str) and service:
        tags["service.name"] = service[:8000]
    data: dict[str, Any] = {
        "trace_id": trace_id,
        "experiment_id": experiment_id,
        "timestamp_ms": root.start_time_ns // 1_000_000,
        "execution_time_ms": max(0, root.end_time_ns - root.start_time_ns) // 1_000_000,
        "state": "ERROR" if root.status.value == "ERROR" else "OK",
        "metadata": metadata,
        "tags": tags,
        "request_preview": _text(inputs, _PREVIEW_CAP),
        "response_preview": _text(outputs, _PREVIEW_CAP),
        "spans": [schema_span(s) for s in spans],
    }
    try:
        return msgspec.convert(data, TraceEvent)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"trace {trace_id}: {exc}") from None


def export_events(request: Mapping[str, Any], experiment_id: str) -> OtlpBatch:
    """The events of one export; invalid traces are counted in ``rejected_spans`` with a reason."""
    out = OtlpBatch()
    by_trace: dict[str, tuple[list[QuerySpan], Mapping[str, Any]]] = {}
    mlflow_traces: set[str] = set()
    resource_spans = request.get("resourceSpans", request.get("resource_spans")) or []
    if not isinstance(resource_spans, list):
        raise InvalidRequest("resourceSpans must be a list")
    for rs in resource_spans:
        if not isinstance(rs, Mapping):
            raise InvalidRequest("resourceSpans[] must be objects")
        raw_resource = rs.get("resource") or {}
        if not isinstance(raw_resource, Mapping):
            raise InvalidRequest("resourceSpans[].resource must be an object")
        try:
            resource = _attributes(raw_resource)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InvalidRequest(f"resourceSpans[].resource.attributes are not OTLP key-values: {exc}") from None
        scopes = rs.get("scopeSpans", rs.get("scope_spans", rs.get("instrumentationLibrarySpans"))) or []
        for scope in scopes if isinstance(scopes, list) else []:
            raw = scope.get("spans") if isinstance(scope, Mapping) else None
            spans = parse_spans(raw or [], "OTLP export")
            out.spans += len(spans)
            for span, raw_span in zip(spans, raw or [], strict=True):
                by_trace.setdefault(span.trace_id, ([], resource))[0].append(span)
                if _from_mlflow(raw_span):
                    mlflow_traces.add(span.trace_id)
    for trace_id, (trace_spans, trace_resource) in by_trace.items():
        try:
            out.events.extend(
                _trace_events(trace_id, trace_spans, trace_resource, experiment_id, trace_id in mlflow_traces)
            )
        except InvalidRequest as exc:
            out.rejected_spans += len(trace_spans)
            out.errors.append(str(exc))
    return out


def _from_mlflow(raw_span: Any) -> bool:
    attributes = raw_span.get("attributes") if isinstance(raw_span, Mapping) else None
    if isinstance(attributes, Mapping):
        return _SPAN_REQUEST_ID in attributes
    return any(isinstance(kv, Mapping) and kv.get("key") == _SPAN_REQUEST_ID for kv in attributes or ())


def _trace_events(
    trace_id: str, spans: list[QuerySpan], resource: Mapping[str, Any], experiment_id: str, from_mlflow: bool
) -> list[Event]:
    root = next((s for s in spans if s.parent_id is None), None)
    if root is not None and not from_mlflow:
        event = _trace_event(trace_id, spans, root, resource, experiment_id)
        if len(msgspec.json.encode(event)) <= MAX_ENVELOPE_BYTES:
            return [event]
        # Too large for one message: the trace travels without its spans, which follow in chunks.
        stats = orjson.dumps({"num_spans": len(spans)}).decode()
        head = msgspec.structs.replace(event, spans=[], metadata={**event.metadata, SIZE_STATS: stats})
        user, session = head.metadata.get(keys.TRACE_USER, ""), head.metadata.get(keys.TRACE_SESSION, "")
        return [head, *spans_events(trace_id, [schema_span(s) for s in spans], experiment_id=experiment_id,
                                    timestamp_ms=head.timestamp_ms, user_id=user, session_id=session)]
    user = _first([s.attributes for s in spans] + [resource], _USER_KEYS)
    session = _first([s.attributes for s in spans] + [resource], _SESSION_KEYS)
    return list(
        spans_events(trace_id, [schema_span(s) for s in spans], experiment_id=experiment_id,
                     user_id=user, session_id=session)
    )  # fmt: skip


def export_response(batch: OtlpBatch, media: str) -> tuple[bytes, str]:
    """An ``ExportTraceServiceResponse`` in the request's encoding, with partial success if any."""
    message = "; ".join(batch.errors)[:4000]
    if media == PROTOBUF:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        resp = ExportTraceServiceResponse()
        if batch.rejected_spans:
            resp.partial_success.rejected_spans = batch.rejected_spans
            resp.partial_success.error_message = message
        return resp.SerializeToString(), PROTOBUF
    body: dict[str, Any] = {}
    if batch.rejected_spans:
        body["partialSuccess"] = {"rejectedSpans": str(batch.rejected_spans), "errorMessage": message}
    return orjson.dumps(body), JSON
