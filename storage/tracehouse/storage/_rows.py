"""Turn validated events into ClickHouse rows. Pure functions: no I/O, easy to test.

Identity (``user_id``, ``session_id``) is resolved here once per trace and copied onto every span row.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from tracehouse.schemas import (
    AssessmentEvent,
    Event,
    SdkHeartbeat,
    SessionRecord,
    Span,
    SpansEvent,
    TagDeleteEvent,
    TagSetEvent,
    TraceEvent,
    UserTraceFact,
    keys,
)

TRACE_COLUMNS: Final = (
    "trace_id", "experiment_id", "client_request_id", "timestamp_ms", "execution_time_ms", "state",
    "name", "user_id", "session_id", "request_preview", "response_preview", "metadata", "tags",
    "span_count", "input_tokens", "output_tokens", "total_tokens", "src_offset",
)  # fmt: skip
SPAN_COLUMNS: Final = (
    "trace_id", "span_id", "parent_span_id", "experiment_id", "user_id", "session_id", "timestamp_ms",
    "name", "span_type", "status", "status_message", "start_time_ns", "end_time_ns", "attributes", "events",
)  # fmt: skip
TAG_COLUMNS: Final = ("trace_id", "key", "value", "version", "is_deleted")
ASSESSMENT_COLUMNS: Final = (
    "assessment_id", "trace_id", "session_id", "name", "kind", "value", "value_text", "source_type",
    "source_id", "rationale", "valid", "metadata", "create_time_ms", "version", "is_deleted",
)  # fmt: skip
SESSION_COLUMNS: Final = (
    "session_id", "experiment_id", "user_id", "user_ids", "first_ms", "last_ms", "last_end_ms", "turns",
    "error_turns", "total_duration_ms", "first_request_preview", "last_response_preview", "input_tokens",
    "output_tokens", "total_tokens", "status", "inferred", "version", "first_trace_id", "last_trace_id",
    "trace_hashes",
)  # fmt: skip

USER_TRACE_COLUMNS: Final = (
    "experiment_id", "user_id", "day", "trace_id", "session_id", "timestamp_ms", "execution_time_ms", "error",
    "input_tokens", "output_tokens", "total_tokens",
)  # fmt: skip

HEARTBEAT_COLUMNS: Final = (
    "process_id", "time_ms", "accepted", "published", "dropped", "failed", "buffered", "service", "sdk_version",
)  # fmt: skip

UINT64_MAX: Final = 2**64 - 1
SIZE_STATS: Final = "mlflow.trace.sizeStats"
_EPOCH: Final = datetime.date(1970, 1, 1)
_DAY_MS: Final = 86_400_000

#: Which table each row kind goes to, and its columns.
TABLES: Final[dict[str, tuple[str, ...]]] = {
    "traces": TRACE_COLUMNS,
    "spans": SPAN_COLUMNS,
    "trace_tags": TAG_COLUMNS,
    "assessments": ASSESSMENT_COLUMNS,
    "sessions": SESSION_COLUMNS,
    "user_trace_facts": USER_TRACE_COLUMNS,
    "sdk_heartbeats": HEARTBEAT_COLUMNS,
}


@dataclass(slots=True)
class RowBatch:
    """Rows bound for each table, in the column order of :data:`TABLES`."""

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: {t: [] for t in TABLES})
    #: Trace ids in this batch: a trace is logged once, so a later event of the same id is ignored.
    trace_ids: set[str] = field(default_factory=set)
    #: (trace id, span id) of the spans that came in ``spans`` events: a duplicate ``trace`` event
    #: dropped by :meth:`drop_traces` must not take them along.
    loose_spans: set[tuple[str, str]] = field(default_factory=set)
    #: The Kafka offset of the envelope whose events are being added (``-1``: not from Kafka), stored
    #: with each trace: a sessionizer reloading a session counts the stored traces it already folded.
    src_offset: int = -1

    def add(self, event: Event) -> None:
        add_event_rows(self, event)

    def drop_traces(self, trace_ids: set[str]) -> int:
        """Remove the trace events of ``trace_ids`` (their trace, span and logged-tag rows): they were
        logged by an earlier batch. Later tag and assessment events are kept. Returns traces dropped."""
        if not trace_ids:
            return 0
        traces = self.rows["traces"]
        versions = {r[0]: r[3] * 1_000_000 for r in traces if r[0] in trace_ids}
        self.rows["traces"] = [r for r in traces if r[0] not in trace_ids]
        loose = self.loose_spans
        self.rows["spans"] = [r for r in self.rows["spans"] if r[0] not in trace_ids or (r[0], r[1]) in loose]
        self.rows["trace_tags"] = [r for r in self.rows["trace_tags"] if versions.get(r[0]) != r[3]]
        self.trace_ids -= trace_ids
        return len(versions)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())


def _json_value(value: Any) -> str:
    """Attribute values are stored as JSON text, as MLflow's span attributes are."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


def value_text(value: Any) -> str:
    """The string form the filter grammar compares: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else _json_value(value)


def _tokens(event: TraceEvent) -> tuple[int, int, int]:
    return keys.trace_token_usage(event.metadata.get(keys.TRACE_TOKEN_USAGE),
                                  lambda: (s.attributes.get(keys.SPAN_TOKEN_USAGE) for s in event.spans))  # fmt: skip


def root_span_name(event: TraceEvent) -> str:
    for span in event.spans:
        if span.parent_span_id is None:
            return span.name
    return event.tags.get(keys.TRACE_NAME_TAG, "")


def _span_row(
    trace_id: str, span: Span, experiment_id: str, user_id: str, session_id: str, timestamp_ms: int
) -> tuple[Any, ...]:
    events = (
        orjson.dumps(
            [{"name": e.name, "timestamp_ns": e.timestamp_ns, "attributes": e.attributes} for e in span.events],
            default=str,
        ).decode()
        if span.events
        else "[]"
    )
    return (
        trace_id, span.span_id, span.parent_span_id or "", experiment_id, user_id, session_id, timestamp_ms,
        span.name, span.span_type, span.status, span.status_message, span.start_time_ns, span.end_time_ns,
        {k: _json_value(v) for k, v in span.attributes.items()}, events,
    )  # fmt: skip


def _add_spans(batch: RowBatch, event: SpansEvent) -> None:
    """Spans sent apart from their trace. Rows are keyed by (experiment, trace, span), so a span sent
    twice, or also inside its ``trace`` event, collapses into one row."""
    ts = event.timestamp_ms
    if ts is None:
        ts = min(s.start_time_ns for s in event.spans) // 1_000_000
    rows = batch.rows["spans"]
    for span in event.spans:
        rows.append(_span_row(event.trace_id, span, event.experiment_id, event.user_id, event.session_id, ts))
        batch.loose_spans.add((event.trace_id, span.span_id))


def _span_count(event: TraceEvent) -> int:
    """Spans in the event, or for a trace whose spans travel apart (MLflow's StartTraceV3) the count
    its client reported in ``mlflow.trace.sizeStats``."""
    if event.spans:
        return len(event.spans)
    raw = event.metadata.get(SIZE_STATS)
    if raw:
        try:
            n = orjson.loads(raw).get("num_spans")
        except (orjson.JSONDecodeError, AttributeError):
            return 0
        if isinstance(n, int) and 0 <= n < 2**32:
            return n
    return 0


def add_event_rows(batch: RowBatch, event: Event) -> None:
    """Append the rows one event produces to ``batch``."""
    if isinstance(event, TraceEvent):
        _add_trace(batch, event)
    elif isinstance(event, SpansEvent):
        _add_spans(batch, event)
    elif isinstance(event, TagSetEvent):
        batch.rows["trace_tags"].append((event.trace_id, event.key, event.value, event.timestamp_ns, 0))
    elif isinstance(event, TagDeleteEvent):
        batch.rows["trace_tags"].append((event.trace_id, event.key, "", event.timestamp_ns, 1))
    elif isinstance(event, AssessmentEvent):
        batch.rows["assessments"].append(
            (
                event.assessment_id, event.trace_id, event.session_id or "", event.name, event.kind,
                _json_value(event.value), value_text(event.value), event.source.source_type,
                event.source.source_id, event.rationale, int(event.valid), dict(event.metadata),
                event.create_time_ms, event.create_time_ms, 0,
            )
        )
    elif isinstance(event, SessionRecord):
        batch.rows["sessions"].append(session_row(event))
    elif isinstance(event, UserTraceFact):
        batch.rows["user_trace_facts"].append(user_trace_row(event))
    elif isinstance(event, SdkHeartbeat):
        batch.rows["sdk_heartbeats"].append((
            event.process_id, event.time_ms, min(event.accepted, UINT64_MAX), min(event.published, UINT64_MAX),
            min(event.dropped, UINT64_MAX), min(event.failed, UINT64_MAX), min(event.buffered, UINT64_MAX),
            event.service, event.sdk_version,
        ))  # fmt: skip


def user_trace_row(event: UserTraceFact) -> tuple[Any, ...]:
    """The ``user_trace_facts`` row of one fact; its ``day`` is the UTC day of the trace."""
    return (
        event.experiment_id, event.user_id, _EPOCH + datetime.timedelta(days=event.timestamp_ms // _DAY_MS),
        event.trace_id, event.session_id, event.timestamp_ms, event.execution_time_ms, int(event.error),
        min(event.input_tokens, UINT64_MAX), min(event.output_tokens, UINT64_MAX),
        min(event.total_tokens, UINT64_MAX),
    )  # fmt: skip


def session_row(event: SessionRecord) -> tuple[Any, ...]:
    """The ``sessions`` row of one session record (counts capped to fit ``UInt64``)."""

    def u64(v: int) -> int:
        return min(v, UINT64_MAX)

    return (
        event.session_id, event.experiment_id, event.user_ids[0] if event.user_ids else "",
        list(event.user_ids), event.first_ms, event.last_ms, event.last_end_ms, u64(event.turns),
        u64(event.error_turns), u64(event.total_duration_ms), event.first_request_preview,
        event.last_response_preview, u64(event.input_tokens), u64(event.output_tokens),
        u64(event.total_tokens), event.status, int(event.inferred), u64(event.version), event.first_trace_id,
        event.last_trace_id, event.trace_hashes,
    )  # fmt: skip


def _add_trace(batch: RowBatch, event: TraceEvent) -> None:
    if event.trace_id in batch.trace_ids:
        return  # first write wins: metadata is immutable once a trace is logged
    root = next((s for s in event.spans if s.parent_span_id is None), None)
    user, session = keys.resolve_identity(event.metadata, root.attributes if root else None)
    user_id, session_id = user or "", session or ""
    name = root.name if root else event.tags.get(keys.TRACE_NAME_TAG, "")
    tags = dict(event.tags)
    if name and keys.TRACE_NAME_TAG not in tags:
        tags[keys.TRACE_NAME_TAG] = name
    inp, out, total = _tokens(event)
    batch.rows["traces"].append(
        (
            event.trace_id, event.experiment_id, event.client_request_id, event.timestamp_ms,
            event.execution_time_ms, event.state, name, user_id, session_id, event.request_preview,
            event.response_preview, dict(event.metadata), tags, _span_count(event), inp, out, total,
            batch.src_offset,
        )
    )
    span_rows = batch.rows["spans"]
    for span in event.spans:
        span_rows.append(_span_row(event.trace_id, span, event.experiment_id, user_id, session_id, event.timestamp_ms))
    # Tags logged with the trace are the first version of each tag; later tag events supersede them.
    version = event.timestamp_ms * 1_000_000
    tag_rows = batch.rows["trace_tags"]
    for key, value in tags.items():
        tag_rows.append((event.trace_id, key, value, version, 0))
    batch.trace_ids.add(event.trace_id)
