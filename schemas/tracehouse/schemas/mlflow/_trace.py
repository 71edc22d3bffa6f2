"""Trace objects with the attribute names of MLflow 3 and of MLflow's user & session guide.

``Trace(info, data)``: ``info`` is a :class:`TraceInfo` whose ``to_dict()`` is MLflow's TraceInfoV3
JSON (what ``traces/search`` returns), ``data`` a :class:`TraceData` holding the spans. Every object
has ``to_dict()`` / ``from_dict()`` and ``from_dict(x.to_dict()) == x``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NoReturn

import orjson

from tracehouse.schemas import TRACE_TOKEN_USAGE, resolve_identity
from tracehouse.schemas.errors import ImmutableMetadataError

from ._assessment import Assessment
from ._span import Span
from ._wire import format_duration, format_timestamp, get_field, parse_duration, parse_timestamp


class TraceState(StrEnum):
    """State of a trace; compares equal to its name (``info.state == "OK"``)."""

    STATE_UNSPECIFIED = "STATE_UNSPECIFIED"
    OK = "OK"
    ERROR = "ERROR"
    IN_PROGRESS = "IN_PROGRESS"

    @classmethod
    def parse(cls, value: Any) -> TraceState:
        text = str(value or "STATE_UNSPECIFIED").upper()
        return cls(text) if text in cls.__members__ else cls.STATE_UNSPECIFIED


#: MLflow's deprecated name for the same enum.
TraceStatus = TraceState


class TraceMetadata(Mapping[str, str]):
    """Read-only mapping of a trace's metadata. Metadata is immutable once a trace is logged: every
    mutation raises :class:`ImmutableMetadataError`. Use tags for mutable annotations."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, str] = dict(data or {})

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"TraceMetadata({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableMetadataError(
            "Trace metadata is immutable once a trace is logged; it cannot be changed. "
            "Use tags for mutable annotations (set_trace_tag / delete_trace_tag)."
        )

    __setitem__ = _refuse
    __delitem__ = _refuse
    update = _refuse
    pop = _refuse
    popitem = _refuse
    clear = _refuse
    setdefault = _refuse

    def to_dict(self) -> dict[str, str]:
        """A mutable copy."""
        return dict(self._data)

    copy = to_dict


def _experiment_location(experiment_id: str) -> dict[str, Any]:
    return {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment_id}}


@dataclass(frozen=True, slots=True)
class TraceInfo:
    """The searchable record of a trace (MLflow's ``TraceInfoV3``).

    Fields use MLflow 3's names; the aliases of MLflow 2 and of the user & session guide are
    properties: ``request_id``, ``timestamp_ms`` / ``timestamp``, ``execution_time_ms``, ``status``,
    ``metadata`` / ``request_metadata``.
    """

    trace_id: str
    experiment_id: str = "0"
    request_time: int = 0
    execution_duration: int | None = None
    state: TraceState = TraceState.OK
    client_request_id: str | None = None
    request_preview: str | None = None
    response_preview: str | None = None
    trace_metadata: Mapping[str, str] = field(default_factory=TraceMetadata)
    tags: dict[str, str] = field(default_factory=dict)
    assessments: list[Assessment] = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", TraceState.parse(self.state))
        if not isinstance(self.trace_metadata, TraceMetadata):
            object.__setattr__(self, "trace_metadata", TraceMetadata(self.trace_metadata))

    @property
    def request_id(self) -> str:
        return self.trace_id

    @property
    def timestamp_ms(self) -> int:
        """Start of the trace, milliseconds since the epoch (= ``request_time``)."""
        return self.request_time

    @property
    def timestamp(self) -> int:
        return self.request_time

    @property
    def execution_time_ms(self) -> int | None:
        """Duration in milliseconds (= ``execution_duration``)."""
        return self.execution_duration

    @property
    def end_time_ms(self) -> int | None:
        return None if self.execution_duration is None else self.request_time + self.execution_duration

    @property
    def status(self) -> TraceState:
        """Same enum as ``state`` (MLflow's deprecated ``TraceStatus``)."""
        return self.state

    @property
    def metadata(self) -> Mapping[str, str]:
        """Read-only trace metadata (also ``trace_metadata`` and ``request_metadata``)."""
        return self.trace_metadata

    @property
    def request_metadata(self) -> Mapping[str, str]:
        return self.trace_metadata

    @property
    def trace_location(self) -> dict[str, Any]:
        return _experiment_location(self.experiment_id)

    @property
    def token_usage(self) -> dict[str, int] | None:
        """``{"input_tokens", "output_tokens", "total_tokens"}`` from metadata ``mlflow.trace.tokenUsage``."""
        raw = self.trace_metadata.get(TRACE_TOKEN_USAGE)
        if not raw:
            return None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(parsed, dict):
            return None
        return {k: int(v) for k, v in parsed.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}

    @property
    def user_id(self) -> str | None:
        """The user of the trace (metadata ``mlflow.trace.user`` or its aliases)."""
        return resolve_identity(self.trace_metadata)[0]

    @property
    def session_id(self) -> str | None:
        """The session of the trace (metadata ``mlflow.trace.session`` or its aliases)."""
        return resolve_identity(self.trace_metadata)[1]

    def to_dict(self) -> dict[str, Any]:
        """MLflow's TraceInfoV3 JSON (snake_case, as ``traces/search`` returns each trace)."""
        d: dict[str, Any] = {"trace_id": self.trace_id}
        if self.client_request_id is not None:
            d["client_request_id"] = self.client_request_id
        d["trace_location"] = _experiment_location(self.experiment_id)
        d["request_time"] = format_timestamp(self.request_time)
        if self.execution_duration is not None:
            d["execution_duration"] = format_duration(self.execution_duration)
        d["state"] = self.state.value
        d["trace_metadata"] = dict(self.trace_metadata)
        if self.assessments:
            d["assessments"] = [a.to_dict() for a in self.assessments]
        d["tags"] = dict(self.tags)
        if self.request_preview is not None:
            d["request_preview"] = self.request_preview
        if self.response_preview is not None:
            d["response_preview"] = self.response_preview
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TraceInfo:
        """Inverse of :meth:`to_dict`; accepts camelCase names and MLflow 2 fields too."""
        location = get_field(d, "trace_location") or {}
        experiment = get_field(location, "mlflow_experiment") or {}
        experiment_id = get_field(experiment, "experiment_id") or get_field(d, "experiment_id") or "0"
        request_time = get_field(d, "request_time")
        if request_time is None:
            request_time = get_field(d, "timestamp_ms") or 0
        duration = get_field(d, "execution_duration")
        if duration is None:
            duration = get_field(d, "execution_time_ms")
        metadata = get_field(d, "trace_metadata")
        if metadata is None:
            metadata = get_field(d, "request_metadata") or {}
        state = d.get("state") or d.get("status")
        return cls(
            trace_id=str(get_field(d, "trace_id") or get_field(d, "request_id") or ""),
            experiment_id=str(experiment_id),
            request_time=parse_timestamp(request_time),
            execution_duration=None if duration is None else parse_duration(duration),
            state=TraceState.parse(state),
            client_request_id=get_field(d, "client_request_id"),
            request_preview=get_field(d, "request_preview"),
            response_preview=get_field(d, "response_preview"),
            trace_metadata=TraceMetadata(metadata),
            tags=dict(d.get("tags") or {}),
            assessments=[Assessment.from_dict(a) for a in d.get("assessments") or []],
        )


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


@dataclass(frozen=True, slots=True)
class TraceData:
    """The spans of a trace (empty when a search asked for ``include_spans=False``)."""

    spans: list[Span] = field(default_factory=list)

    def _root(self) -> Span | None:
        return next((s for s in self.spans if s.parent_id is None), None)

    @property
    def request(self) -> str | None:
        """The root span's inputs as JSON text (MLflow's ``TraceData.request``)."""
        root = self._root()
        return None if root is None else _json_text(root.inputs)

    @property
    def response(self) -> str | None:
        """The root span's outputs as JSON text."""
        root = self._root()
        return None if root is None else _json_text(root.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"spans": [s.to_dict() for s in self.spans]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TraceData:
        return cls(spans=[Span.from_dict(s) for s in d.get("spans") or []])


@dataclass(frozen=True, slots=True)
class Trace:
    """A trace: its :class:`TraceInfo` and its :class:`TraceData`."""

    info: TraceInfo
    data: TraceData = field(default_factory=TraceData)

    def to_dict(self) -> dict[str, Any]:
        """``{"info": TraceInfoV3 JSON, "data": {"spans": [OTel span JSON]}}`` (MLflow's shape)."""
        return {"info": self.info.to_dict(), "data": self.data.to_dict()}

    def to_v3_dict(self) -> dict[str, Any]:
        """``{"trace_info": ..., "spans": [...]}``: one entry of MLflow's ``batchGet`` / ``traces/get``."""
        return {"trace_info": self.info.to_dict(), "spans": [s.to_dict() for s in self.data.spans]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trace:
        """Inverse of :meth:`to_dict`; also reads the :meth:`to_v3_dict` shape."""
        if "info" in d:
            return cls(info=TraceInfo.from_dict(d["info"]), data=TraceData.from_dict(d.get("data") or {}))
        info = get_field(d, "trace_info")
        if info is None:
            raise ValueError(f"not a trace: expected keys 'info' and 'data', got {sorted(d)}")
        spans = [Span.from_dict(s) for s in d.get("spans") or []]
        return cls(info=TraceInfo.from_dict(info), data=TraceData(spans=spans))

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Trace:
        return cls.from_dict(orjson.loads(text))

    def search_spans(self, span_type: str | None = None, name: str | re.Pattern[str] | None = None,
                     span_id: str | None = None) -> list[Span]:
        """Spans matching every given criterion (``name`` may be a compiled regex)."""
        def matches(s: Span) -> bool:
            if span_type is not None and s.span_type != span_type:
                return False
            if isinstance(name, re.Pattern):
                if name.search(s.name) is None:
                    return False
            elif name is not None and s.name != name:
                return False
            return span_id is None or s.span_id == span_id

        return [s for s in self.data.spans if matches(s)]

    def search_assessments(self, name: str | None = None, *, all: bool = False,
                           type: Literal["feedback", "expectation"] | None = None) -> list[Assessment]:
        """Assessments by name and kind; only valid ones unless ``all=True`` (as in MLflow)."""
        return [a for a in self.info.assessments
                if (name is None or a.name == name) and (type is None or a.kind == type)
                and (all or a.valid)]
