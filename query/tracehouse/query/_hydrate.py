"""Rows → trace objects, and the batched reads that complete a page of traces.

Tags, assessments and spans of a page are read with one query each (``trace_id IN {ids}``), never
one query per trace. Every read goes through ``FINAL`` (replayed duplicates collapse, deleted tags
and assessments vanish) plus ``LIMIT 1 BY`` on the row identity as a second guard.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from tracehouse.schemas import TRACE_SESSION, TRACE_USER
from tracehouse.schemas.mlflow import (
    Assessment,
    AssessmentSource,
    Span,
    SpanEvent,
    TraceInfo,
    TraceMetadata,
    TraceState,
)
from tracehouse.storage import Store

#: The columns of ``traces AS t`` a TraceInfo is built from, in :func:`info_from_row` order.
TRACE_SELECT: Final = (
    "t.trace_id, t.experiment_id, t.client_request_id, t.timestamp_ms, t.execution_time_ms, t.state, "
    "t.user_id, t.session_id, t.request_preview, t.response_preview, t.metadata"
)
TRACE_SELECT_WIDTH: Final = 11


def effective_metadata(metadata: Mapping[str, str], user_id: str, session_id: str) -> dict[str, str]:
    """The metadata a trace shows: as logged, with the resolved identity under ``mlflow.trace.user`` /
    ``mlflow.trace.session`` (as MLflow's server does for spans that carry ``user.id`` /
    ``session.id``), so filters on those keys and the returned metadata agree."""
    out = dict(metadata)
    if user_id:
        out[TRACE_USER] = user_id
    if session_id:
        out[TRACE_SESSION] = session_id
    return out


def info_from_row(row: Sequence[Any], tags: dict[str, str] | None = None,
                  assessments: list[Assessment] | None = None) -> TraceInfo:
    (trace_id, experiment_id, client_request_id, timestamp_ms, execution_time_ms, state, user_id,
     session_id, request_preview, response_preview, metadata) = row[:TRACE_SELECT_WIDTH]
    return TraceInfo(
        trace_id=trace_id,
        experiment_id=experiment_id,
        request_time=int(timestamp_ms),
        execution_duration=int(execution_time_ms),
        state=TraceState.parse(state),
        client_request_id=client_request_id,
        request_preview=request_preview or None,
        response_preview=response_preview or None,
        trace_metadata=TraceMetadata(effective_metadata(metadata or {}, user_id, session_id)),
        tags=tags or {},
        assessments=assessments or [],
    )


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def read_tags(store: Store, trace_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Current tags of each trace (deleted tags excluded)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    if not trace_ids:
        return out
    rows = store.query(
        "SELECT trace_id, key, value FROM trace_tags FINAL "
        "WHERE trace_id IN {ids:Array(String)} AND is_deleted = 0 "
        "ORDER BY trace_id, key LIMIT 1 BY trace_id, key",
        {"ids": list(trace_ids)},
    )
    for trace_id, key, value in rows:
        out[trace_id][key] = value
    return out


def read_assessments(store: Store, trace_ids: Sequence[str]) -> dict[str, list[Assessment]]:
    """Assessments of each trace, oldest first (deleted ones excluded, invalid ones kept)."""
    out: dict[str, list[Assessment]] = defaultdict(list)
    if not trace_ids:
        return out
    rows = store.query(
        "SELECT assessment_id, trace_id, name, kind, value, source_type, source_id, rationale, valid, "
        "metadata, create_time_ms FROM assessments FINAL "
        "WHERE trace_id IN {ids:Array(String)} AND is_deleted = 0 "
        "ORDER BY trace_id, create_time_ms, assessment_id LIMIT 1 BY trace_id, assessment_id",
        {"ids": list(trace_ids)},
    )
    for (assessment_id, trace_id, name, kind, value, source_type, source_id, rationale, valid,
         metadata, create_time_ms) in rows:
        out[trace_id].append(Assessment(
            name=name,
            value=_json(value),
            kind="expectation" if kind == "expectation" else "feedback",
            trace_id=trace_id,
            assessment_id=assessment_id,
            source=AssessmentSource(source_type, source_id),
            rationale=rationale,
            create_time_ms=int(create_time_ms),
            valid=bool(valid),
            metadata=dict(metadata or {}),
        ))
    return out


def _events(text: str) -> list[SpanEvent]:
    parsed = _json(text) if text else []
    if not isinstance(parsed, list):
        return []
    return [SpanEvent(name=str(e.get("name", "")), timestamp_ns=int(e.get("timestamp_ns") or 0),
                      attributes=dict(e.get("attributes") or {}))
            for e in parsed if isinstance(e, dict)]


def read_spans(store: Store, trace_ids: Sequence[str], experiment_ids: Sequence[str] | None = None
               ) -> dict[str, list[Span]]:
    """Spans of each trace in start-time order. ``experiment_ids`` (those of the traces) prunes by the
    table's primary key."""
    out: dict[str, list[Span]] = defaultdict(list)
    if not trace_ids:
        return out
    params: dict[str, Any] = {"ids": list(trace_ids)}
    scope = ""
    if experiment_ids:
        params["exps"] = sorted(set(experiment_ids))
        scope = "experiment_id IN {exps:Array(String)} AND "
    rows = store.query(
        "SELECT trace_id, span_id, parent_span_id, name, span_type, status, status_message, "
        "start_time_ns, end_time_ns, attributes, events FROM spans FINAL "
        f"WHERE {scope}trace_id IN {{ids:Array(String)}} "
        "ORDER BY trace_id, start_time_ns, span_id LIMIT 1 BY trace_id, span_id",
        params,
    )
    for (trace_id, span_id, parent, name, span_type, status, status_message, start_ns, end_ns,
         attributes, events) in rows:
        out[trace_id].append(Span(
            span_id=span_id,
            trace_id=trace_id,
            name=name,
            start_time_ns=int(start_ns),
            end_time_ns=int(end_ns),
            parent_id=parent or None,
            span_type=span_type,
            status=status,
            status_message=status_message,
            attributes={k: _json(v) for k, v in (attributes or {}).items()},
            events=_events(events),
        ))
    return out
