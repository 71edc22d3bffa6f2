"""Traces as a pandas DataFrame with the columns of MLflow 3's ``mlflow.search_traces``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import orjson

from tracehouse.schemas.mlflow import Trace

if TYPE_CHECKING:
    import pandas as pd

    from ._sessions import SessionSummary
    from ._users import UserRollup

#: MLflow 3's ``search_traces`` DataFrame columns, in order.
DATAFRAME_COLUMNS: Final = (
    "trace_id", "trace", "client_request_id", "state", "request_time", "execution_duration",
    "request", "response", "trace_metadata", "tags", "spans", "assessments",
)  # fmt: skip


def _decoded(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def trace_row(trace: Trace) -> dict[str, Any]:
    """One DataFrame row, as MLflow's ``Trace.to_pandas_dataframe_row``: ``trace`` is the trace's
    JSON, ``state`` the :class:`TraceState`, times in milliseconds, ``request`` / ``response`` the
    root span's decoded inputs / outputs."""
    info = trace.info
    return {
        "trace_id": info.trace_id,
        "trace": trace.to_json(),
        "client_request_id": info.client_request_id,
        "state": info.state,
        "request_time": info.request_time,
        "execution_duration": info.execution_duration,
        "request": _decoded(trace.data.request),
        "response": _decoded(trace.data.response),
        "trace_metadata": dict(info.trace_metadata),
        "tags": dict(info.tags),
        "spans": [s.to_dict() for s in trace.data.spans],
        "assessments": [a.to_dict() for a in info.assessments],
    }


def traces_to_dataframe(traces: Iterable[Trace]) -> pd.DataFrame:
    """A DataFrame with one row per trace and MLflow's columns (empty, with the columns, when no trace)."""
    import pandas as pd

    return pd.DataFrame([trace_row(t) for t in traces], columns=list(DATAFRAME_COLUMNS))


#: Columns of :func:`sessions_to_dataframe`, in order.
SESSION_DATAFRAME_COLUMNS: Final = (
    "session_id", "experiment_id", "user_id", "user_ids", "status", "first_ms", "last_ms", "last_end_ms",
    "turns", "error_turns", "total_duration_ms", "input_tokens", "output_tokens", "total_tokens",
    "first_request_preview", "last_response_preview", "inferred", "version",
)  # fmt: skip


def sessions_to_dataframe(sessions: Iterable[SessionSummary]) -> pd.DataFrame:
    """One row per session with :data:`SESSION_DATAFRAME_COLUMNS` (empty, with the columns, when none)."""
    import pandas as pd

    rows = [s.to_dict() for s in sessions]
    return pd.DataFrame(rows, columns=list(SESSION_DATAFRAME_COLUMNS))


#: Columns of :func:`users_to_dataframe`, in order (``day`` is set for daily buckets only).
USER_DATAFRAME_COLUMNS: Final = (
    "user_id", "day", "interactions", "unique_sessions", "avg_response_time_ms", "p50_response_time_ms",
    "p95_response_time_ms", "error_count", "error_rate", "first_seen_ms", "last_seen_ms", "input_tokens",
    "output_tokens", "total_tokens",
)  # fmt: skip


def users_to_dataframe(users: Iterable[UserRollup]) -> pd.DataFrame:
    """One row per user (or per user and day) with :data:`USER_DATAFRAME_COLUMNS`."""
    import pandas as pd

    return pd.DataFrame([u.to_dict() for u in users], columns=list(USER_DATAFRAME_COLUMNS))
