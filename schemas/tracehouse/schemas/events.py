"""The versioned event contracts (schema version 1).

Every event is one JSON object with a ``type`` discriminator. Producers encode with orjson; the
processors decode with msgspec, which validates types, patterns and bounds in the same pass.

* ``trace``: one finished trace with its immutable metadata and all its spans.
* ``spans``: spans of a trace that travel apart from its ``trace`` event (MLflow's ``traces.json``
  upload, OTLP exports). A span is identified by ``(trace_id, span_id)``: the same span sent twice is
  stored once, in whichever order the ``trace`` and ``spans`` events arrive.
* ``tag_set`` / ``tag_delete``: a mutable tag of a trace, versioned by ``timestamp_ns``.
* ``assessment``: feedback or an expectation on a trace (or a session).
* ``session``: a session's current state, from the sessionizer (topic ``sessions.v1``).
* ``user_trace``: one trace's share of its user's rollups, repartitioned by user by the sessionizer
  (topic ``user-rollups.v1``).
* ``sdk_heartbeat``: an SDK process's counters (accepted, published, dropped), every minute.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

SCHEMA_VERSION: Final = 1

#: Most turns whose trace hashes a closed session record carries (about 530 KiB of base64).
MAX_SEALED_TURNS: Final = 50_000
MAX_SEALED_BASE64: Final = (MAX_SEALED_TURNS * 8 + 2) // 3 * 4

TRACE_ID_PATTERN: Final = r"^tr-[0-9a-f]{32}$"
SPAN_ID_PATTERN: Final = r"^[0-9a-f]{16}$"

TraceId = Annotated[str, msgspec.Meta(pattern=TRACE_ID_PATTERN, description="'tr-' + 32 lowercase hex")]
SpanId = Annotated[str, msgspec.Meta(pattern=SPAN_ID_PATTERN, description="16 lowercase hex")]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=250)]
ShortText = Annotated[str, msgspec.Meta(max_length=1000)]
TagValue = Annotated[str, msgspec.Meta(max_length=8000)]
UnixNanos = Annotated[int, msgspec.Meta(ge=0)]
UnixMillis = Annotated[int, msgspec.Meta(ge=0)]
ExperimentId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

TraceState = Literal["OK", "ERROR", "IN_PROGRESS"]
SpanStatus = Literal["OK", "ERROR", "UNSET"]


class SpanEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """A point-in-time event inside a span, e.g. ``exception``."""

    name: ShortText
    timestamp_ns: UnixNanos
    attributes: dict[str, Any] = {}


class Span(msgspec.Struct, frozen=True, omit_defaults=True):
    """One span. Inputs and outputs live in ``attributes`` under ``mlflow.spanInputs`` /
    ``mlflow.spanOutputs`` as JSON values, as in MLflow."""

    span_id: SpanId
    name: ShortText
    start_time_ns: UnixNanos
    end_time_ns: UnixNanos
    parent_span_id: SpanId | None = None
    span_type: Annotated[str, msgspec.Meta(max_length=64)] = "UNKNOWN"
    status: SpanStatus = "OK"
    status_message: ShortText = ""
    attributes: dict[str, Any] = {}
    events: list[SpanEvent] = []


class TraceEvent(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="trace"):
    """A finished trace. Its metadata is immutable: later events cannot change it."""

    trace_id: TraceId
    timestamp_ms: UnixMillis
    execution_time_ms: Annotated[int, msgspec.Meta(ge=0)]
    state: TraceState
    experiment_id: ExperimentId = "0"
    client_request_id: Annotated[str, msgspec.Meta(max_length=250)] | None = None
    request_preview: Annotated[str, msgspec.Meta(max_length=10_000)] = ""
    response_preview: Annotated[str, msgspec.Meta(max_length=10_000)] = ""
    metadata: dict[Key, TagValue] = {}
    tags: dict[Key, TagValue] = {}
    spans: list[Span] = []
    schema_version: Literal[1] = 1


class SpansEvent(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="spans"):
    """Spans of one trace sent apart from its ``trace`` event. Idempotent per span id.

    ``user_id`` / ``session_id`` copy the trace's identity onto the span rows when the producer knows
    it (empty otherwise); ``timestamp_ms`` is the trace's start (default: the earliest span start)."""

    trace_id: TraceId
    spans: Annotated[list[Span], msgspec.Meta(min_length=1)]
    experiment_id: ExperimentId = "0"
    timestamp_ms: UnixMillis | None = None
    user_id: Annotated[str, msgspec.Meta(max_length=250)] = ""
    session_id: Annotated[str, msgspec.Meta(max_length=250)] = ""
    schema_version: Literal[1] = 1


class TagSetEvent(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="tag_set"):
    """Set a mutable tag. The newest ``timestamp_ns`` wins."""

    trace_id: TraceId
    key: Key
    value: TagValue
    timestamp_ns: UnixNanos
    schema_version: Literal[1] = 1


class TagDeleteEvent(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="tag_delete"):
    """Delete a mutable tag. The newest ``timestamp_ns`` wins."""

    trace_id: TraceId
    key: Key
    timestamp_ns: UnixNanos
    schema_version: Literal[1] = 1


class AssessmentSource(msgspec.Struct, frozen=True, omit_defaults=True):
    source_type: Literal["HUMAN", "LLM_JUDGE", "CODE", "SOURCE_TYPE_UNSPECIFIED"] = "CODE"
    source_id: Annotated[str, msgspec.Meta(max_length=250)] = "default"


class AssessmentEvent(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="assessment"):
    """Feedback or an expectation about a trace. ``value`` is any JSON value."""

    assessment_id: Annotated[str, msgspec.Meta(pattern=r"^a-[0-9a-f]{32}$")]
    trace_id: TraceId
    name: Key
    kind: Literal["feedback", "expectation"]
    value: Any
    create_time_ms: UnixMillis
    source: AssessmentSource = AssessmentSource()
    rationale: Annotated[str, msgspec.Meta(max_length=10_000)] | None = None
    session_id: Annotated[str, msgspec.Meta(max_length=250)] | None = None
    valid: bool = True
    metadata: dict[Key, TagValue] = {}
    schema_version: Literal[1] = 1


class SessionRecord(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="session"):
    """The current state of a session, emitted by the sessionizer on topic ``sessions.v1`` (keyed by
    session id). The newest ``version`` of a session wins; a closed session reopened by a late turn
    keeps its id and gets a higher version."""

    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=250)]
    first_ms: UnixMillis
    last_ms: UnixMillis
    last_end_ms: UnixMillis
    turns: Annotated[int, msgspec.Meta(ge=0)]
    version: Annotated[int, msgspec.Meta(ge=0)]
    experiment_id: ExperimentId = "0"
    user_ids: list[Annotated[str, msgspec.Meta(max_length=250)]] = []
    total_duration_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    error_turns: Annotated[int, msgspec.Meta(ge=0)] = 0
    first_request_preview: Annotated[str, msgspec.Meta(max_length=10_000)] = ""
    last_response_preview: Annotated[str, msgspec.Meta(max_length=10_000)] = ""
    input_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    output_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    total_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    status: Literal["open", "closed"] = "open"
    inferred: bool = False
    #: The trace ids of the first and the last turn (ties in time broken by id), when known.
    first_trace_id: Annotated[str, msgspec.Meta(max_length=64)] = ""
    last_trace_id: Annotated[str, msgspec.Meta(max_length=64)] = ""
    #: Closed records only: the sorted 64-bit hashes of the trace ids counted (BLAKE2b, little-endian,
    #: base64), so a sessionizer that reloads the session counts each trace once. Omitted past
    #: :data:`MAX_SEALED_TURNS` turns.
    trace_hashes: Annotated[str, msgspec.Meta(max_length=MAX_SEALED_BASE64)] = ""
    schema_version: Literal[1] = 1


class UserTraceFact(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="user_trace"):
    """One trace's contribution to its user's rollups, emitted by the sessionizer on topic
    ``user-rollups.v1`` (partitioned by user id) the first time it sees the trace.

    ``src_partition`` / ``src_offset`` / ``src_line`` name the ``traces.v1`` line it came from. The
    sessionizer emits a partition's facts in that order and re-emits identical facts when it replays
    after a crash or a rebalance, so the sink skips every fact at or below the highest position it
    already applied for that source partition: rollups never count a trace twice."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=250)]
    trace_id: TraceId
    timestamp_ms: UnixMillis
    execution_time_ms: Annotated[int, msgspec.Meta(ge=0)]
    src_partition: Annotated[int, msgspec.Meta(ge=0)]
    src_offset: Annotated[int, msgspec.Meta(ge=0)]
    src_line: Annotated[int, msgspec.Meta(ge=0)] = 0
    experiment_id: ExperimentId = "0"
    session_id: Annotated[str, msgspec.Meta(max_length=250)] = ""
    error: bool = False
    input_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    output_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    total_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    schema_version: Literal[1] = 1


class SdkHeartbeat(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="type", tag="sdk_heartbeat"):
    """A periodic report from one process's SDK publisher, on ``traces.v1`` (keyed by ``process_id``):
    what it accepted, what Kafka acknowledged, what it dropped. ``tracehouse status`` sums the newest
    report of each process, so drops that happen in the app are visible where the pipeline is."""

    #: ``<host>:<pid>:<random>``, one per SDK start.
    process_id: Key
    time_ms: UnixMillis
    #: Since the SDK started: events accepted, acknowledged by Kafka, dropped (buffer full, or not sent
    #: before shutdown), failed (refused by Kafka), and waiting in the buffer now.
    accepted: Annotated[int, msgspec.Meta(ge=0)] = 0
    published: Annotated[int, msgspec.Meta(ge=0)] = 0
    dropped: Annotated[int, msgspec.Meta(ge=0)] = 0
    failed: Annotated[int, msgspec.Meta(ge=0)] = 0
    buffered: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: The app, as ``OTEL_SERVICE_NAME`` or the script name says.
    service: ShortText = ""
    sdk_version: Annotated[str, msgspec.Meta(max_length=64)] = ""
    schema_version: Literal[1] = 1


Event = (
    TraceEvent | SpansEvent | TagSetEvent | TagDeleteEvent | AssessmentEvent | SessionRecord | UserTraceFact
    | SdkHeartbeat
)
EVENT_TYPES: Final = (
    TraceEvent, SpansEvent, TagSetEvent, TagDeleteEvent, AssessmentEvent, SessionRecord, UserTraceFact, SdkHeartbeat,
)  # fmt: skip
