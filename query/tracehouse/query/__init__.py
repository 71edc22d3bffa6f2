"""Query traces: MLflow's search grammar compiled to parameterised ClickHouse SQL, MLflow-shaped
trace objects, per-user and per-session analysis, and DataFrames.

>>> reader = TraceReader(store)
>>> page = reader.search_traces(filter_string="metadata.`mlflow.trace.user` = 'u1'",
...                             order_by=["timestamp ASC"])
>>> [t.info.trace_id for t in page.traces], page.next_page_token

Every read the HTTP API, the clients and the CLI offer is a registered read operation
(:func:`read_operation`, :func:`operations`): one definition each, the rest is derived.
"""

from tracehouse.schemas.errors import (
    INVALID_PARAMETER_VALUE,
    ImmutableMetadataError,
    InvalidFilterError,
    InvalidOrderByError,
    InvalidPageTokenError,
    InvalidParameterError,
    RemoteError,
)
from tracehouse.schemas.mlflow import (
    Assessment,
    AssessmentSource,
    Span,
    SpanEvent,
    SpanStatusCode,
    Trace,
    TraceData,
    TraceInfo,
    TraceMetadata,
    TraceState,
    TraceStatus,
)

from ._analysis import SessionTimeline, SessionTurn, UserSummary, session_timeline, user_summary_from_traces
from ._client import PagedList, TraceClient, search_traces
from ._compile import filter_to_sql
from ._dataframe import (
    DATAFRAME_COLUMNS,
    SESSION_DATAFRAME_COLUMNS,
    USER_DATAFRAME_COLUMNS,
    sessions_to_dataframe,
    traces_to_dataframe,
    users_to_dataframe,
)
from ._filter import Comparison, parse_filter
from ._grammar import Entity
from ._operations import (
    OperationField,
    Param,
    ReadOperation,
    collect,
    operation,
    operations,
    read_operation,
    unregister,
)
from ._order import OrderKey, parse_order_by
from ._paging import MAX_PAGE_SIZE
from ._reader import TracePage, TraceReader, collect_traces, fetch_trace, get_traces, search_page
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
from ._users import (
    USER_ORDER_KEYS,
    UserDetail,
    UserPage,
    UserRollup,
    UserView,
    get_user,
    list_users,
    user_summary,
    user_view,
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
    "OperationField",
    "OrderKey",
    "PagedList",
    "Param",
    "ReadOperation",
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
    "UserView",
    "collect",
    "collect_traces",
    "fetch_trace",
    "filter_to_sql",
    "get_session",
    "get_traces",
    "get_user",
    "list_sessions",
    "list_users",
    "operation",
    "operations",
    "parse_filter",
    "parse_order_by",
    "read_operation",
    "search_page",
    "search_traces",
    "session_feedback",
    "session_summary",
    "session_timeline",
    "sessions_to_dataframe",
    "traces_to_dataframe",
    "unregister",
    "user_summary",
    "user_summary_from_traces",
    "user_view",
    "users_to_dataframe",
]
