"""``log_feedback`` / ``log_expectation``: publish an ``assessment`` event about a trace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracehouse.schemas import resolve_identity
from tracehouse.schemas.mlflow import AssessmentSource, AssessmentSourceType

from ._events import MAX_KEY_CHARS, MAX_TEXT_CHARS, assessment_event, string_map
from ._ids import new_assessment_id
from ._runtime import RUNTIME
from ._serialize import to_jsonable
from ._tags import check_trace_id
from ._trace import active_trace


def _source(source: Any, default_type: str) -> dict[str, str]:
    if source is None:
        resolved = AssessmentSource(default_type)
    elif isinstance(source, AssessmentSource):
        resolved = source
    elif isinstance(source, Mapping):
        resolved = AssessmentSource(
            source.get("source_type", default_type), source.get("source_id", "default")
        )
    elif hasattr(source, "source_type"):  # tracehouse.schemas.AssessmentSource, mlflow's, ...
        resolved = AssessmentSource(source.source_type, getattr(source, "source_id", "default"))
    else:
        raise TypeError(f"source must be an AssessmentSource or a dict, got {type(source).__name__}")
    return {"source_type": resolved.source_type, "source_id": resolved.source_id}


def _log_assessment(
    kind: str,
    default_source: str,
    trace_id: str,
    name: str,
    value: Any,
    source: Any,
    rationale: str | None,
    session_id: str | None,
    metadata: Mapping[str, Any] | None,
) -> str:
    check_trace_id(trace_id)
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_KEY_CHARS:
        raise ValueError(f"name must be a string of 1 to {MAX_KEY_CHARS} characters, got {name!r}")
    if rationale is not None and (not isinstance(rationale, str) or len(rationale) > MAX_TEXT_CHARS):
        raise ValueError(f"rationale must be a string of at most {MAX_TEXT_CHARS} characters")
    if session_id is not None and (not isinstance(session_id, str) or len(session_id) > MAX_KEY_CHARS):
        raise ValueError(f"session_id must be a string of at most {MAX_KEY_CHARS} characters")
    src = _source(source, default_source)
    if session_id is None:
        state = active_trace(trace_id)
        if state is not None:
            session_id = resolve_identity(dict(state.metadata))[1]
    assessment_id = new_assessment_id()
    RUNTIME.submit(
        assessment_event(
            assessment_id=assessment_id,
            trace_id=trace_id,
            name=name,
            kind=kind,
            value=to_jsonable(value),
            source=src,
            rationale=rationale,
            session_id=session_id,
            metadata=string_map(metadata) if metadata else None,
        )
    )
    return assessment_id


def log_feedback(
    trace_id: str,
    name: str = "feedback",
    value: Any = None,
    source: AssessmentSource | Mapping[str, str] | None = None,
    rationale: str | None = None,
    session_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Publish feedback about a trace (thumbs up, a score, a label...), like ``mlflow.log_feedback``.

    ``value`` is any JSON value; ``source`` defaults to ``CODE``/``default``. Pass ``session_id`` so
    the event is partitioned with the session's traces (taken from the trace when it is still active).
    Returns the new assessment id (``a-`` + 32 hex). Raises :class:`ValueError` / :class:`TypeError`
    on malformed arguments.
    """
    return _log_assessment(
        "feedback", AssessmentSourceType.CODE, trace_id, name, value, source, rationale, session_id, metadata
    )


def log_expectation(
    trace_id: str,
    name: str,
    value: Any,
    source: AssessmentSource | Mapping[str, str] | None = None,
    session_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Publish the expected output (ground truth) of a trace, like ``mlflow.log_expectation``.
    ``source`` defaults to ``HUMAN``/``default``. Returns the new assessment id."""
    return _log_assessment(
        "expectation", AssessmentSourceType.HUMAN, trace_id, name, value, source, None, session_id, metadata
    )
