"""Assessments (feedback and expectations) attached to a trace, in MLflow's JSON shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from ._wire import format_timestamp, get_field, parse_timestamp

AssessmentKind = Literal["feedback", "expectation"]


class AssessmentSourceType:
    """Who produced an assessment (MLflow's ``AssessmentSourceType``)."""

    HUMAN: Final = "HUMAN"
    LLM_JUDGE: Final = "LLM_JUDGE"
    CODE: Final = "CODE"
    SOURCE_TYPE_UNSPECIFIED: Final = "SOURCE_TYPE_UNSPECIFIED"


_SOURCE_TYPES: Final = frozenset({"HUMAN", "LLM_JUDGE", "CODE", "SOURCE_TYPE_UNSPECIFIED"})
_MAX_SOURCE_ID: Final = 250


@dataclass(frozen=True, slots=True)
class AssessmentSource:
    """Who produced an assessment: ``source_type`` (``HUMAN``, ``LLM_JUDGE``, ``CODE``,
    ``SOURCE_TYPE_UNSPECIFIED``; any case, or an enum with that ``value``) and ``source_id`` (e.g. the
    reviewer's user id, or the judge's name; at most 250 characters). Anything else is a ``ValueError``."""

    source_type: str = AssessmentSourceType.CODE
    source_id: str = "default"

    def __post_init__(self) -> None:
        kind = str(getattr(self.source_type, "value", self.source_type)).upper()
        if kind not in _SOURCE_TYPES:
            raise ValueError(f"source_type must be one of {sorted(_SOURCE_TYPES)}, got {self.source_type!r}")
        object.__setattr__(self, "source_type", kind)
        if not isinstance(self.source_id, str) or len(self.source_id) > _MAX_SOURCE_ID:
            raise ValueError(f"source_id must be a string of at most {_MAX_SOURCE_ID} characters")

    def to_dict(self) -> dict[str, str]:
        return {"source_type": self.source_type, "source_id": self.source_id}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AssessmentSource:
        source_type, source_id = get_field(d, "source_type"), get_field(d, "source_id")
        return cls(source_type="CODE" if source_type is None else str(source_type),
                   source_id="default" if source_id is None else str(source_id))


@dataclass(frozen=True, slots=True)
class Assessment:
    """Feedback or an expectation about a trace.

    ``value`` is any JSON value. ``valid`` is false once the assessment was overridden; the search
    grammar (``feedback.<name>``) only looks at valid ones.
    """

    name: str
    value: Any
    kind: AssessmentKind = "feedback"
    trace_id: str | None = None
    assessment_id: str | None = None
    source: AssessmentSource = field(default_factory=AssessmentSource)
    rationale: str | None = None
    create_time_ms: int = 0
    last_update_time_ms: int | None = None
    valid: bool = True
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.last_update_time_ms is None:
            object.__setattr__(self, "last_update_time_ms", self.create_time_ms)

    @property
    def assessment_name(self) -> str:
        """MLflow's name for :attr:`name`."""
        return self.name

    @property
    def feedback(self) -> dict[str, Any] | None:
        """``{"value": ...}`` for feedback, else None (as in MLflow's JSON)."""
        return {"value": self.value} if self.kind == "feedback" else None

    @property
    def expectation(self) -> dict[str, Any] | None:
        """``{"value": ...}`` for an expectation, else None."""
        return {"value": self.value} if self.kind == "expectation" else None

    def to_dict(self) -> dict[str, Any]:
        """MLflow's assessment JSON (``assessment_name``, ``feedback``/``expectation``, ``source`` ...)."""
        d: dict[str, Any] = {}
        if self.assessment_id is not None:
            d["assessment_id"] = self.assessment_id
        d["assessment_name"] = self.name
        if self.trace_id is not None:
            d["trace_id"] = self.trace_id
        d["source"] = self.source.to_dict()
        d["create_time"] = format_timestamp(self.create_time_ms)
        d["last_update_time"] = format_timestamp(
            self.create_time_ms if self.last_update_time_ms is None else self.last_update_time_ms
        )
        d[self.kind] = {"value": self.value}
        if self.rationale is not None:
            d["rationale"] = self.rationale
        if self.metadata:
            d["metadata"] = dict(self.metadata)
        d["valid"] = self.valid
        return d

    def to_dictionary(self) -> dict[str, Any]:
        """Alias of :meth:`to_dict` (the name MLflow's DataFrame code calls)."""
        return self.to_dict()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Assessment:
        """Inverse of :meth:`to_dict`; also reads MLflow's ``serialized_value`` expectations."""
        kind: AssessmentKind = "expectation" if d.get("expectation") is not None else "feedback"
        body = d.get(kind) or {}
        if "value" in body:
            value = body["value"]
        elif (serialized := get_field(body, "serialized_value")) is not None:
            value = orjson.loads(serialized.get("value", "null"))
        else:
            value = None
        create = get_field(d, "create_time")
        update = get_field(d, "last_update_time")
        create_ms = parse_timestamp(create) if create is not None else 0
        return cls(
            name=str(get_field(d, "assessment_name") or d.get("name") or ""),
            value=value,
            kind=kind,
            trace_id=get_field(d, "trace_id"),
            assessment_id=get_field(d, "assessment_id"),
            source=AssessmentSource.from_dict(d.get("source") or {}),
            rationale=d.get("rationale"),
            create_time_ms=create_ms,
            last_update_time_ms=parse_timestamp(update) if update is not None else None,
            valid=bool(d.get("valid", True)),
            metadata=dict(d.get("metadata") or {}),
        )
