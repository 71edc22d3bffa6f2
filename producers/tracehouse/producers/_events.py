"""Build the wire events: plain dicts in the shapes of ``tracehouse.schemas``.

``build_trace_event`` runs in the publisher thread (or synchronously for an ``exporter``): the
application thread only hands over the finished :class:`~._record.TraceRecord`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from tracehouse.schemas import SCHEMA_VERSION, keys

from ._record import LiveSpan, TraceRecord
from ._serialize import truncate

#: MLflow truncates ``mlflow.traceInputs`` / ``mlflow.traceOutputs`` and the previews to 250 characters.
PREVIEW_CHARS: Final = 250
MAX_KEY_CHARS: Final = 250
MAX_VALUE_CHARS: Final = 8000
MAX_TEXT_CHARS: Final = 10_000
MAX_SHORT_CHARS: Final = 1000
_TOKEN_FIELDS: Final = ("input_tokens", "output_tokens", "total_tokens")

__all__ = [
    "assessment_event",
    "build_trace_event",
    "materialize",
    "string_map",
    "tag_delete_event",
    "tag_set_event",
]


def materialize(item: dict[str, Any] | TraceRecord) -> dict[str, Any]:
    """The event dict of a queued item (a ready dict, or a finished trace)."""
    if isinstance(item, dict):
        return item
    return build_trace_event(item)


def preview_json(value: Any) -> str:
    """JSON text of a recorded value, formatted like MLflow (``json.dumps``, non-ASCII kept)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return orjson.dumps(value, default=repr).decode()


def string_map(values: Mapping[Any, Any]) -> dict[str, str]:
    """Metadata/tag map within the schema's bounds: str keys of 1–250 chars, str values ≤ 8000 chars."""
    out: dict[str, str] = {}
    for key, value in list(values.items()):
        k = key if type(key) is str else str(key)
        if not k:
            continue
        v = value if type(value) is str else str(value)
        out[truncate(k, MAX_KEY_CHARS)] = truncate(v, MAX_VALUE_CHARS)
    return out


def _span_dict(span: LiveSpan) -> dict[str, Any]:
    attributes = dict(span._attributes)
    attributes[keys.SPAN_TYPE] = span.span_type
    out: dict[str, Any] = {
        "span_id": span.span_id,
        "name": truncate(span.name, MAX_SHORT_CHARS),
        "span_type": truncate(span.span_type, 64),
        "start_time_ns": span.start_time_ns,
        "end_time_ns": span.end_time_ns if span.end_time_ns is not None else span.start_time_ns,
        "status": span._status,
        "attributes": attributes,
    }
    if span.parent_id is not None:
        out["parent_span_id"] = span.parent_id
    if span._status_message:
        out["status_message"] = span._status_message
    if span._events:
        out["events"] = list(span._events)
    return out


def _token_usage(spans: list[LiveSpan]) -> str | None:
    totals = dict.fromkeys(_TOKEN_FIELDS, 0)
    found = False
    for span in spans:
        usage = span._attributes.get(keys.SPAN_TOKEN_USAGE)
        if usage is None:
            continue
        if isinstance(usage, str):
            try:
                usage = orjson.loads(usage)
            except orjson.JSONDecodeError:
                continue
        if not isinstance(usage, Mapping):
            continue
        counts = {f: v for f in _TOKEN_FIELDS if type(v := usage.get(f)) is int}
        if not counts:
            continue
        found = True
        counts.setdefault("total_tokens", counts.get("input_tokens", 0) + counts.get("output_tokens", 0))
        for field, value in counts.items():
            totals[field] += value
    return json.dumps(totals) if found else None


def build_trace_event(trace: TraceRecord) -> dict[str, Any]:
    """The ``trace`` event of a finished trace (MLflow trace info + all spans)."""
    root = trace.root
    if root is None:  # pragma: no cover - a trace always has its root
        raise ValueError(f"trace {trace.trace_id} has no root span")
    start = root.start_time_ns
    end = root.end_time_ns if root.end_time_ns is not None else start
    error = root._status == "ERROR"
    attrs = root._attributes
    inputs = preview_json(attrs[keys.SPAN_INPUTS]) if keys.SPAN_INPUTS in attrs else ""
    outputs = preview_json(attrs[keys.SPAN_OUTPUTS]) if keys.SPAN_OUTPUTS in attrs and not error else ""

    metadata = string_map(trace.metadata)
    metadata[keys.TRACE_SCHEMA_VERSION] = "3"
    metadata[keys.TRACE_INPUTS] = truncate(inputs, PREVIEW_CHARS)
    metadata[keys.TRACE_OUTPUTS] = truncate(outputs, PREVIEW_CHARS)
    usage = _token_usage(trace.spans)
    if usage is not None:
        metadata[keys.TRACE_TOKEN_USAGE] = usage
    tags = string_map(trace.tags)
    tags.setdefault(keys.TRACE_NAME_TAG, truncate(root.name, MAX_VALUE_CHARS) or "span")

    request_preview = trace.request_preview
    response_preview = trace.response_preview
    event: dict[str, Any] = {
        "type": "trace",
        "schema_version": SCHEMA_VERSION,
        "trace_id": trace.trace_id,
        "experiment_id": trace.experiment_id,
        "timestamp_ms": start // 1_000_000,
        "execution_time_ms": max(end - start, 0) // 1_000_000,
        "state": "ERROR" if error else "OK",
        "request_preview": truncate(request_preview, MAX_TEXT_CHARS)
        if request_preview is not None
        else truncate(inputs, PREVIEW_CHARS),
        "response_preview": truncate(response_preview, MAX_TEXT_CHARS)
        if response_preview is not None
        else truncate(outputs, PREVIEW_CHARS),
        "metadata": metadata,
        "tags": tags,
        "spans": [_span_dict(span) for span in list(trace.spans)],
    }
    if trace.client_request_id is not None:
        event["client_request_id"] = truncate(trace.client_request_id, MAX_KEY_CHARS)
    return event


def tag_set_event(trace_id: str, key: str, value: str) -> dict[str, Any]:
    """A ``tag_set`` event, versioned by the current time."""
    return {
        "type": "tag_set",
        "schema_version": SCHEMA_VERSION,
        "trace_id": trace_id,
        "key": key,
        "value": value,
        "timestamp_ns": time.time_ns(),
    }


def tag_delete_event(trace_id: str, key: str) -> dict[str, Any]:
    """A ``tag_delete`` event, versioned by the current time."""
    return {
        "type": "tag_delete",
        "schema_version": SCHEMA_VERSION,
        "trace_id": trace_id,
        "key": key,
        "timestamp_ns": time.time_ns(),
    }


def assessment_event(
    *,
    assessment_id: str,
    trace_id: str,
    name: str,
    kind: str,
    value: Any,
    source: dict[str, str],
    rationale: str | None,
    session_id: str | None,
    metadata: dict[str, str] | None,
) -> dict[str, Any]:
    """An ``assessment`` event (feedback or expectation)."""
    event: dict[str, Any] = {
        "type": "assessment",
        "schema_version": SCHEMA_VERSION,
        "assessment_id": assessment_id,
        "trace_id": trace_id,
        "name": name,
        "kind": kind,
        "value": value,
        "create_time_ms": time.time_ns() // 1_000_000,
        "source": source,
    }
    if rationale is not None:
        event["rationale"] = rationale
    if session_id is not None:
        event["session_id"] = session_id
    if metadata:
        event["metadata"] = metadata
    return event
