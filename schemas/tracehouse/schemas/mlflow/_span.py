"""Spans, serialised as OTel protobuf JSON with snake_case names (MLflow's ``batchGet`` shape).

``Span.to_dict()``::

    {"trace_id": "<base64 of the 16 id bytes>", "span_id": "<base64 of 8 bytes>",
     "parent_span_id": "<base64>" (absent on the root), "name": "...",
     "start_time_unix_nano": 1795343366230816027, "end_time_unix_nano": ...,
     "attributes": [{"key": "mlflow.spanType", "value": {"string_value": "LLM"}}, ...],
     "events": [{"time_unix_nano": ..., "name": "exception", "attributes": [...]}] (absent if none),
     "status": {"code": "STATUS_CODE_ERROR", "message": "..." (absent if empty)}}

Attribute values are typed ``AnyValue``s (dicts become ``kvlist_value``, lists ``array_value``), so
every JSON value round-trips. ``from_dict`` also reads camelCase names, hex ids (OTLP/JSON) and the
``traces.json`` form (attributes as a map of JSON-encoded strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from tracehouse.schemas import SPAN_INPUTS, SPAN_OUTPUTS, SPAN_TYPE

from ._wire import decode_id, encode_id, from_key_values, get_field, key_values

SPAN_REQUEST_ID = "mlflow.traceRequestId"


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


class SpanStatusCode(StrEnum):
    """Status of a span: ``UNSET``, ``OK`` or ``ERROR`` (compares equal to those strings)."""

    UNSET = "UNSET"
    OK = "OK"
    ERROR = "ERROR"

    @classmethod
    def parse(cls, value: Any) -> SpanStatusCode:
        """Accept ``"OK"``, ``"STATUS_CODE_OK"`` or the OTel enum numbers 0/1/2."""
        if isinstance(value, int) and not isinstance(value, bool):
            return (cls.UNSET, cls.OK, cls.ERROR)[value] if 0 <= value <= 2 else cls.UNSET
        text = str(value or "UNSET").upper().removeprefix("STATUS_CODE_")
        return cls(text) if text in cls.__members__ else cls.UNSET


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """A point-in-time event of a span, e.g. ``exception``."""

    name: str
    timestamp_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"time_unix_nano": self.timestamp_ns, "name": self.name,
                "attributes": key_values(self.attributes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpanEvent:
        ts = get_field(d, "time_unix_nano")
        if ts is None:
            ts = get_field(d, "timestamp_ns") or get_field(d, "timestamp") or 0
        return cls(name=str(d.get("name", "")), timestamp_ns=int(ts),
                   attributes=from_key_values(d.get("attributes")))


@dataclass(frozen=True, slots=True)
class Span:
    """One span of a trace.

    ``attributes`` hold decoded JSON values. As in MLflow, ``attributes["mlflow.spanType"]`` always
    equals :attr:`span_type` and ``attributes["mlflow.traceRequestId"]`` names the trace; an empty
    ``span_type`` is taken from the attribute (``UNKNOWN`` when there is none).
    """

    span_id: str
    trace_id: str
    name: str
    start_time_ns: int
    end_time_ns: int
    parent_id: str | None = None
    span_type: str = ""
    status: SpanStatusCode = SpanStatusCode.OK
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        attributes = dict(self.attributes)
        span_type = self.span_type or str(attributes.get(SPAN_TYPE) or "UNKNOWN")
        attributes[SPAN_TYPE] = span_type
        attributes.setdefault(SPAN_REQUEST_ID, self.trace_id)
        object.__setattr__(self, "span_type", span_type)
        object.__setattr__(self, "attributes", attributes)
        object.__setattr__(self, "status", SpanStatusCode.parse(self.status))
        object.__setattr__(self, "parent_id", self.parent_id or None)

    @property
    def request_id(self) -> str:
        """MLflow 2 name of :attr:`trace_id`."""
        return self.trace_id

    @property
    def parent_span_id(self) -> str | None:
        return self.parent_id

    @property
    def inputs(self) -> Any:
        """The span's inputs (attribute ``mlflow.spanInputs``)."""
        return self.attributes.get(SPAN_INPUTS)

    @property
    def outputs(self) -> Any:
        """The span's outputs (attribute ``mlflow.spanOutputs``)."""
        return self.attributes.get(SPAN_OUTPUTS)

    @property
    def duration_ns(self) -> int:
        return self.end_time_ns - self.start_time_ns

    def get_attribute(self, key: str) -> Any:
        return self.attributes.get(key)

    def to_dict(self) -> dict[str, Any]:
        """OTel protobuf JSON, snake_case (the span shape of MLflow's ``batchGet`` / ``traces/get``)."""
        d: dict[str, Any] = {
            "trace_id": encode_id(self.trace_id, "tr-"),
            "span_id": encode_id(self.span_id),
        }
        if self.parent_id:
            d["parent_span_id"] = encode_id(self.parent_id)
        d["name"] = self.name
        d["start_time_unix_nano"] = self.start_time_ns
        d["end_time_unix_nano"] = self.end_time_ns
        d["attributes"] = key_values(self.attributes)
        if self.events:
            d["events"] = [e.to_dict() for e in self.events]
        status: dict[str, Any] = {"code": f"STATUS_CODE_{self.status.value}"}
        if self.status_message:
            status["message"] = self.status_message
        d["status"] = status
        return d

    def to_artifact_dict(self) -> dict[str, Any]:
        """The ``traces.json`` span shape of MLflow's artifact path (Design A): ids in base64,
        attributes as a map of JSON-encoded strings. :meth:`from_dict` reads it back."""
        def encoded(attributes: Mapping[str, Any]) -> dict[str, str]:
            return {k: _json_text(v) for k, v in attributes.items()}

        return {
            "trace_id": encode_id(self.trace_id, "tr-"),
            "span_id": encode_id(self.span_id),
            "parent_span_id": encode_id(self.parent_id) if self.parent_id else None,
            "name": self.name,
            "start_time_unix_nano": self.start_time_ns,
            "end_time_unix_nano": self.end_time_ns,
            "events": [{"name": e.name, "time_unix_nano": e.timestamp_ns, "attributes": encoded(e.attributes)}
                       for e in self.events],
            "status": {"code": f"STATUS_CODE_{self.status.value}", "message": self.status_message},
            "attributes": encoded(self.attributes),
            "links": [],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Span:
        """Inverse of :meth:`to_dict`, lenient about the OTel JSON dialect (see module docstring)."""
        attributes = from_key_values(d.get("attributes"))
        request_id = attributes.get(SPAN_REQUEST_ID)
        trace_id = request_id if isinstance(request_id, str) and request_id else decode_id(
            str(get_field(d, "trace_id") or ""), "tr-", 32)
        parent = get_field(d, "parent_span_id") or get_field(d, "parent_id")
        status = d.get("status") or {}
        if not isinstance(status, Mapping):
            status = {"code": status}
        return cls(
            span_id=decode_id(str(get_field(d, "span_id") or "")),
            trace_id=trace_id,
            name=str(d.get("name", "")),
            start_time_ns=int(get_field(d, "start_time_unix_nano") or get_field(d, "start_time_ns") or 0),
            end_time_ns=int(get_field(d, "end_time_unix_nano") or get_field(d, "end_time_ns") or 0),
            parent_id=decode_id(str(parent)) if parent else None,
            span_type=str(attributes.get(SPAN_TYPE) or ""),
            status=SpanStatusCode.parse(status.get("code")),
            status_message=str(status.get("message") or status.get("description") or ""),
            attributes=attributes,
            events=[SpanEvent.from_dict(e) for e in d.get("events") or []],
        )
