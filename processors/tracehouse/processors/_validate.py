"""Decode, validate and check one line of an envelope: an event, or a typed rejection with a reason.

msgspec validates types, patterns and bounds while decoding (:func:`tracehouse.schemas.decode_event`).
This step adds the checks a schema cannot express: the spans of a trace form a tree (unique ids,
parents inside the trace, at least one root), a span does not end before it starts, and every
timestamp fits the ClickHouse column it lands in (so one absurd value cannot make a whole batch's
insert fail forever). A ``spans`` event carries part of a trace, so its parents may lie elsewhere;
its spans are checked one by one.

Before decoding, a line longer than the sink's limit is refused (``oversized event``). When a line
does not decode, the reason is made precise on that (rare) path only: a raw NUL byte or bytes that are
not UTF-8 name their position, an event of a schema version this sink does not read says so, and a
metadata or tag value over its limit names its key. An escaped ``\\u0000`` inside a JSON string is
data and passes.

A pure function: it must not do I/O, keep state between lines, or raise for bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from tracehouse.schemas import SCHEMA_VERSION, EventDecodeError, decode_event, events
from tracehouse.schemas.kafka import MAX_ENVELOPE_BYTES

#: Largest value of an ``Int64`` nanosecond column (year 2262).
MAX_NS: Final = 2**63 - 1
#: Largest millisecond timestamp whose nanosecond form still fits ``Int64``.
MAX_MS: Final = MAX_NS // 1_000_000
#: The longest line the sink takes unless configured otherwise (``TRACEHOUSE_SINK_MAX_EVENT_BYTES``): the
#: envelope limit every tracehouse producer keeps, so no event of theirs is ever longer.
DEFAULT_MAX_EVENT_BYTES: Final = MAX_ENVELOPE_BYTES
#: Limits of metadata and tag maps (``events.Key`` and ``events.TagValue``), named in reasons.
_MAX_KEY_CHARS: Final = 250
_MAX_VALUE_CHARS: Final = 8000


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a line (or a whole message) was refused. ``reason`` goes to the DLQ header verbatim."""

    reason: str


def check_event(event: events.Event) -> str | None:
    """What is wrong with a decoded event beyond its schema, or ``None`` when it is fine."""
    if isinstance(event, events.TraceEvent):
        return _check_trace(event)
    if isinstance(event, events.SpansEvent):
        if event.timestamp_ms is not None and event.timestamp_ms > MAX_MS:
            return f"invalid event: timestamp_ms {event.timestamp_ms} is out of range - at `$.timestamp_ms`"
        return _check_spans(event.spans)
    if isinstance(event, (events.TagSetEvent, events.TagDeleteEvent)):
        if event.timestamp_ns > MAX_NS:
            return f"invalid event: timestamp_ns {event.timestamp_ns} is out of range - at `$.timestamp_ns`"
        return None
    if isinstance(event, events.AssessmentEvent) and event.create_time_ms > MAX_MS:
        return f"invalid event: create_time_ms {event.create_time_ms} is out of range - at `$.create_time_ms`"
    if isinstance(event, events.UserTraceFact):
        for name in ("timestamp_ms", "execution_time_ms"):
            if getattr(event, name) > MAX_MS:
                return f"invalid event: {name} {getattr(event, name)} is out of range - at `$.{name}`"
        return None
    if isinstance(event, events.SessionRecord):
        for name in ("first_ms", "last_ms", "last_end_ms"):
            if getattr(event, name) > MAX_MS:
                return f"invalid event: {name} {getattr(event, name)} is out of range - at `$.{name}`"
    return None


def _check_trace(event: events.TraceEvent) -> str | None:
    if event.timestamp_ms > MAX_MS:
        return f"invalid event: timestamp_ms {event.timestamp_ms} is out of range - at `$.timestamp_ms`"
    if event.execution_time_ms > MAX_MS:
        return f"invalid event: execution_time_ms {event.execution_time_ms} is out of range - at `$.execution_time_ms`"
    spans = event.spans
    if not spans:
        return None
    problem = _check_spans(spans)
    if problem is not None:
        return problem
    ids = {span.span_id for span in spans}
    has_root = False
    for i, span in enumerate(spans):
        parent = span.parent_span_id
        if parent is None:
            has_root = True
        elif parent not in ids:
            return (
                f"invalid event: parent_span_id {parent!r} of span {span.span_id!r} is not a span of "
                f"this trace - at `$.spans[{i}].parent_span_id`"
            )
    if not has_root:
        return "invalid event: no root span (every span has a parent, so the parents form a cycle) - at `$.spans`"
    return None


def _check_spans(spans: Sequence[events.Span]) -> str | None:
    """Unique ids, sane times, no span its own parent."""
    ids: set[str] = set()
    for i, span in enumerate(spans):
        if span.span_id in ids:
            return f"invalid event: duplicate span_id {span.span_id!r} - at `$.spans[{i}].span_id`"
        ids.add(span.span_id)
        if span.end_time_ns > MAX_NS:
            return f"invalid event: end_time_ns {span.end_time_ns} is out of range - at `$.spans[{i}]`"
        if span.end_time_ns < span.start_time_ns:
            return (
                f"invalid event: span {span.span_id!r} ends before it starts "
                f"(end_time_ns {span.end_time_ns} < start_time_ns {span.start_time_ns}) - at `$.spans[{i}]`"
            )
        for j, ev in enumerate(span.events):
            if ev.timestamp_ns > MAX_NS:
                return f"invalid event: timestamp_ns {ev.timestamp_ns} is out of range - at `$.spans[{i}].events[{j}]`"
        if span.parent_span_id == span.span_id:
            return f"invalid event: span {span.span_id!r} is its own parent - at `$.spans[{i}].parent_span_id`"
    return None


def validate_line(line: bytes, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> events.Event | Rejection:
    """Decode and check one NDJSON line of at most ``max_bytes``. Never raises for bad input."""
    if len(line) > max_bytes:
        return Rejection(
            f"oversized event: the line is {len(line)} bytes, over the limit of {max_bytes} bytes "
            f"(TRACEHOUSE_SINK_MAX_EVENT_BYTES)"
        )
    try:
        event = decode_event(line)
    except EventDecodeError as exc:
        return Rejection(explain(line, str(exc)))
    problem = check_event(event)
    return event if problem is None else Rejection(problem)


def explain(line: bytes, reason: str) -> str:
    """A precise reason for a line that did not decode (``reason`` is msgspec's)."""
    nul = line.find(b"\x00")
    if nul >= 0:
        return (
            f"undecodable event: raw NUL byte at byte {nul} of the line (JSON text cannot hold one; "
            f"inside a string it is written \\u0000)"
        )
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"undecodable event: the line is not UTF-8 text ({exc.reason} at byte {exc.start})"
    try:
        doc: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        return reason
    if not isinstance(doc, dict):
        return reason
    version = doc.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        return (
            f"unsupported schema version: schema_version is {version!r}, this sink reads version "
            f"{SCHEMA_VERSION} - at `$.schema_version`"
        )
    for field in ("metadata", "tags"):
        found = _oversized_entry(doc.get(field))
        if found is not None:
            return f"invalid event: {field} {found} - at `$.{field}`"
    return reason


def _oversized_entry(mapping: Any) -> str | None:
    """What is too long in a metadata or tags map, naming the key."""
    if not isinstance(mapping, dict):
        return None
    for key, value in mapping.items():
        if not 1 <= len(key) <= _MAX_KEY_CHARS:
            return f"key {key[:80]!r}... is {len(key)} characters; keys have 1 to {_MAX_KEY_CHARS}"
        if isinstance(value, str) and len(value) > _MAX_VALUE_CHARS:
            return f"value of key {key!r} is {len(value)} characters, over the limit of {_MAX_VALUE_CHARS}"
    return None
