"""Query traces: MLflow's search grammar compiled to parameterised ClickHouse SQL, MLflow-shaped
trace objects, per-user and per-session analysis, and DataFrames.

>>> reader = TraceReader(store)
>>> page = reader.search_traces(filter_string="metadata.`mlflow.trace.user` = 'u1'",
...                             order_by=["timestamp ASC"])
>>> [t.info.trace_id for t in page.traces], page.next_page_token
"""

from ._analysis import SessionTimeline, SessionTurn, UserSummary, session_timeline, user_summary_from_traces
from ._assessment import Assessment, AssessmentSource
from ._client import PagedList, RemoteError, TraceClient, search_traces
from ._compile import filter_to_sql
from ._dataframe import (
    DATAFRAME_COLUMNS,
    SESSION_DATAFRAME_COLUMNS,
    USER_DATAFRAME_COLUMNS,
    sessions_to_dataframe,
    traces_to_dataframe,
    users_to_dataframe,
)
from ._entities import Trace, TraceData, TraceInfo, TraceMetadata, TraceState, TraceStatus
from ._errors import (
    INVALID_PARAMETER_VALUE,
    ImmutableMetadataError,
    InvalidFilterError,
    InvalidOrderByError,
    InvalidPageTokenError,
    InvalidParameterError,
)
from ._filter import Comparison, parse_filter
from ._grammar import Entity
from ._order import OrderKey, parse_order_by
from ._paging import MAX_PAGE_SIZE
from ._reader import TracePage, TraceReader, collect_traces
from ._sessions import (
    SESSION_ORDER_KEYS,
    SessionDetail,
    SessionPage,
    SessionSummary,
    get_session,
    list_sessions,
    session_feedback,
    session_summary,
)
from ._span import Span, SpanEvent, SpanStatusCode
from ._users import (
    USER_ORDER_KEYS,
    UserDetail,
    UserPage,
    UserRollup,
    get_user,
    list_users,
    user_summary,
)

__all__ = [
    "DATAFRAME_COLUMNS",
    "INVALID_PARAMETER_VALUE",
    "MAX_PAGE_SIZE",
    "SESSION_DATAFRAME_COLUMNS",
    "SESSION_ORDER_KEYS",
    "USER_DATAFRAME_COLUMNS",
    "USER_ORDER_KEYS",
    "Assessment",
    "AssessmentSource",
    "Comparison",
    "Entity",
    "ImmutableMetadataError",
    "InvalidFilterError",
    "InvalidOrderByError",
    "InvalidPageTokenError",
    "InvalidParameterError",
    "OrderKey",
    "PagedList",
    "RemoteError",
    "SessionDetail",
    "SessionPage",
    "SessionSummary",
    "SessionTimeline",
    "SessionTurn",
    "Span",
    "SpanEvent",
    "SpanStatusCode",
    "Trace",
    "TraceClient",
    "TraceData",
    "TraceInfo",
    "TraceMetadata",
    "TracePage",
    "TraceReader",
    "TraceState",
    "TraceStatus",
    "UserDetail",
    "UserPage",
    "UserRollup",
    "UserSummary",
    "collect_traces",
    "filter_to_sql",
    "get_session",
    "get_user",
    "list_sessions",
    "list_users",
    "parse_filter",
    "parse_order_by",
    "search_traces",
    "session_feedback",
    "session_summary",
    "session_timeline",
    "sessions_to_dataframe",
    "traces_to_dataframe",
    "user_summary",
    "user_summary_from_traces",
    "users_to_dataframe",
]
