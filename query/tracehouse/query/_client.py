"""``TraceClient``: one query API over a running tracehouse server or a ClickHouse store directly.

``TraceClient()``                                   the server of ``tracehouse up`` ($TRACEHOUSE_URI,
                                                    default http://127.0.0.1:5000)
``TraceClient("chdb:///path/.tracehouse/chdb")``    the embedded store itself (no other process may
                                                    hold it)
``TraceClient("clickhouse://u:p@host:8123/db")``    a ClickHouse server directly

All three give the same results: the HTTP server runs the same :class:`TraceReader` and ships its
objects as JSON that :meth:`Trace.from_dict` rebuilds losslessly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from tracehouse.schemas import settings
from tracehouse.schemas.errors import RemoteError, TracehouseError
from tracehouse.schemas.mlflow import Trace

from ._operations import ReadOperation, operation

if TYPE_CHECKING:
    import pandas as pd

    from tracehouse.storage import Store

    from ._analysis import SessionTimeline, UserSummary
    from ._reader import TracePage
    from ._sessions import SessionDetail, SessionPage, SessionSummary
    from ._users import UserDetail, UserPage, UserRollup, UserView

DEFAULT_URI = settings.SERVER_URI.default
PAGE_LIMIT = 500

T = TypeVar("T")


class PagedList(list[T], Generic[T]):
    """A list with the token of the next page (``None`` on the last page), as MLflow's."""

    def __init__(self, items: Sequence[T], token: str | None) -> None:
        super().__init__(items)
        self.token = token


class _Runner(Protocol):
    """Runs a read operation: in process on a store, or over HTTP on a tracehouse server."""

    def run(self, op: ReadOperation[Any], params: dict[str, Any]) -> Any: ...

    def close(self) -> None: ...


class _StoreRunner:
    def __init__(self, store: Store, owned: bool) -> None:
        self._store, self._owned = store, owned

    def run(self, op: ReadOperation[Any], params: dict[str, Any]) -> Any:
        return op.run(self._store, **params)

    def close(self) -> None:
        if self._owned:
            self._store.close()


class _HttpRunner:
    def __init__(self, uri: str, timeout: float) -> None:
        import httpx

        self._http = httpx.Client(base_url=uri.rstrip("/"), timeout=timeout)

    def run(self, op: ReadOperation[Any], params: dict[str, Any]) -> Any:
        import httpx

        path, payload = op.request(params)
        try:
            get = op.method == "GET"
            resp = self._http.request(op.method, path, params=payload if get else None, json=None if get else payload)
        except httpx.TransportError as exc:
            raise ConnectionError(
                f"cannot reach the tracehouse server at {self._http.base_url}: {exc}. "
                "Is `tracehouse up` running? Set TRACEHOUSE_URI or pass a chdb:// or clickhouse:// URI."
            ) from None
        answer: dict[str, Any] = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            raise RemoteError(resp.status_code, str(answer.get("error_code", "INTERNAL_ERROR")),
                              str(answer.get("message", resp.text)))  # fmt: skip
        return op.decode(answer)

    def close(self) -> None:
        self._http.close()


class TraceClient:
    """Search and analyse traces. ``uri``: explicit > ``$TRACEHOUSE_URI`` > http://127.0.0.1:5000."""

    def __init__(self, uri: str | None = None, *, timeout: float = 30.0) -> None:
        self.uri = settings.SERVER_URI.read(uri or None)
        scheme = self.uri.split(":", 1)[0].lower()
        self._runner: _Runner
        if scheme in ("http", "https"):
            self._runner = _HttpRunner(self.uri, timeout)
        else:
            from tracehouse.storage import Store

            self._runner = _StoreRunner(Store(self.uri), owned=True)

    @classmethod
    def from_store(cls, store: Store) -> TraceClient:
        """A client over an already-open store (the caller keeps ownership)."""
        client = cls.__new__(cls)
        client.uri = store.uri
        client._runner = _StoreRunner(store, owned=False)
        return client

    def run(self, op: str | ReadOperation[Any], /, **params: Any) -> Any:
        """Run a read operation (by name or object; see :func:`tracehouse.query.operations`) with
        ``params``: in process on a store, or through the server's route for it. Both give the same
        result. The typed methods below are shortcuts for the built-in operations."""
        return self._runner.run(operation(op) if isinstance(op, str) else op, params)

    def search_traces(
        self,
        experiment_ids: Sequence[str] | None = None,
        filter_string: str | None = None,
        max_results: int = 100,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
        include_spans: bool = True,
    ) -> PagedList[Trace]:
        """Traces matching MLflow's ``filter_string``, newest first unless ``order_by`` says otherwise.

        Pages of at most 500 are fetched until ``max_results`` traces are collected; the returned
        list's ``token`` continues from there.
        """
        exps = [str(e) for e in experiment_ids] if experiment_ids else None
        orders = list(order_by) if order_by else None
        out: list[Trace] = []
        token = page_token
        while True:
            want = min(PAGE_LIMIT, max_results - len(out))
            page: TracePage = self.run("search", experiment_ids=exps, filter_string=filter_string, max_results=want,
                                       order_by=orders, page_token=token, include_spans=include_spans)  # fmt: skip
            out.extend(page.traces)
            token = page.next_page_token
            if not token or len(out) >= max_results:
                return PagedList(out, token)

    def search_traces_df(
        self,
        experiment_ids: Sequence[str] | None = None,
        filter_string: str | None = None,
        max_results: int = 100,
        order_by: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """:meth:`search_traces` as a DataFrame with MLflow's columns."""
        from ._dataframe import traces_to_dataframe

        return traces_to_dataframe(self.search_traces(experiment_ids, filter_string, max_results, order_by))

    def get_trace(self, trace_id: str) -> Trace | None:
        """One trace with its spans, current tags and assessments, or ``None``."""
        try:
            return cast("Trace", self.run("trace", trace_id=trace_id))
        except TracehouseError as exc:
            if exc.http_status == 404:
                return None
            raise

    def user_summary(
        self, user_id: str, *, experiment_ids: Sequence[str] | None = None, source: str = "auto"
    ) -> UserSummary:
        """A user's interactions, unique sessions, response times and errors: from the per-user rollups
        (``source="rollups"``), from the raw traces (``"traces"``), or the rollups when the user has
        any (``"auto"``)."""
        view: UserView = self.run("user", user_id=user_id, experiment_ids=list(experiment_ids) if experiment_ids
                                  else None, source=source)  # fmt: skip
        return view.user

    def list_users(
        self,
        *,
        experiment_ids: Sequence[str] | None = None,
        since: int | None = None,
        until: int | None = None,
        order_by: str | Sequence[str] | None = None,
        max_results: int = 100,
        page_token: str | None = None,
    ) -> UserPage:
        """One page (≤ 500) of users with their rollups, ordered by any rollup column
        (default ``interactions DESC``); see :func:`tracehouse.query.list_users`."""
        orders = [order_by] if isinstance(order_by, str) else list(order_by) if order_by else None
        return cast("UserPage", self.run(
            "users", experiment_ids=list(experiment_ids) if experiment_ids else None, since=since, until=until,
            order_by=orders, max_results=max_results, page_token=page_token,
        ))  # fmt: skip

    def iter_users(self, **kwargs: Any) -> Iterator[UserRollup]:
        """Every user, page by page (``kwargs`` as :meth:`list_users`)."""
        token = kwargs.pop("page_token", None)
        kwargs.setdefault("max_results", PAGE_LIMIT)
        while True:
            page = self.list_users(page_token=token, **kwargs)
            yield from page.users
            token = page.next_page_token
            if not token:
                return

    def list_users_df(self, *, max_results: int | None = 100, **kwargs: Any) -> pd.DataFrame:
        """Users and their rollups as a DataFrame (``kwargs`` as :meth:`list_users`), following pages
        until ``max_results`` (``None``: all)."""
        from ._dataframe import users_to_dataframe

        out: list[UserRollup] = []
        for user in self.iter_users(**kwargs):
            if max_results is not None and len(out) >= max_results:
                break
            out.append(user)
        return users_to_dataframe(out)

    def get_user(
        self,
        user_id: str,
        *,
        experiment_ids: Sequence[str] | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> UserDetail:
        """A user's rollup over the selected days and its daily buckets (``summary`` is ``None`` for a
        user without rollups)."""
        view: UserView = self.run("user", user_id=user_id, experiment_ids=list(experiment_ids) if experiment_ids
                                  else None, since=since, until=until)  # fmt: skip
        return view.rollup

    def get_user_df(self, user_id: str, **kwargs: Any) -> pd.DataFrame:
        """A user's daily buckets as a DataFrame (``kwargs`` as :meth:`get_user`)."""
        from ._dataframe import users_to_dataframe

        return users_to_dataframe(self.get_user(user_id, **kwargs).days)

    def session_timeline(
        self,
        session_id: str,
        *,
        experiment_ids: Sequence[str] | None = None,
        page_token: str | None = None,
        max_results: int = 100,
    ) -> SessionTimeline:
        """A session's turns in order (turn number, time, duration, status), one page at a time."""
        return self.get_session(session_id, experiment_ids=experiment_ids, page_token=page_token,
                                max_results=max_results).timeline

    def list_sessions(
        self,
        user_id: str | None = None,
        *,
        experiment_ids: Sequence[str] | None = None,
        status: str | None = None,
        since: int | None = None,
        until: int | None = None,
        order_by: str | Sequence[str] | None = None,
        max_results: int = 100,
        page_token: str | None = None,
    ) -> SessionPage:
        """One page (≤ 500) of sessions, the newest record of each; see :func:`tracehouse.query.list_sessions`."""
        orders = [order_by] if isinstance(order_by, str) else list(order_by) if order_by else None
        return cast("SessionPage", self.run(
            "sessions", user_id=user_id, experiment_ids=list(experiment_ids) if experiment_ids else None,
            status=status, since=since, until=until, order_by=orders, max_results=max_results, page_token=page_token,
        ))  # fmt: skip

    def iter_sessions(self, user_id: str | None = None, **kwargs: Any) -> Iterator[SessionSummary]:
        """Every matching session, page by page (``kwargs`` as :meth:`list_sessions`)."""
        token = kwargs.pop("page_token", None)
        kwargs.setdefault("max_results", PAGE_LIMIT)
        while True:
            page = self.list_sessions(user_id, page_token=token, **kwargs)
            yield from page.sessions
            token = page.next_page_token
            if not token:
                return

    def list_sessions_df(
        self,
        user_id: str | None = None,
        *,
        experiment_ids: Sequence[str] | None = None,
        status: str | None = None,
        since: int | None = None,
        until: int | None = None,
        order_by: str | Sequence[str] | None = None,
        max_results: int | None = 100,
    ) -> pd.DataFrame:
        """Sessions as a DataFrame (one row per session, the columns of :class:`SessionSummary`),
        following pages until ``max_results`` (``None``: all)."""
        from ._dataframe import sessions_to_dataframe

        out: list[SessionSummary] = []
        token: str | None = None
        while max_results is None or len(out) < max_results:
            want = PAGE_LIMIT if max_results is None else min(PAGE_LIMIT, max_results - len(out))
            page = self.list_sessions(user_id, experiment_ids=experiment_ids, status=status, since=since,
                                      until=until, order_by=order_by, max_results=want, page_token=token)  # fmt: skip
            out.extend(page.sessions)
            token = page.next_page_token
            if not token:
                break
        return sessions_to_dataframe(out)

    def get_session(
        self,
        session_id: str,
        *,
        experiment_ids: Sequence[str] | None = None,
        page_token: str | None = None,
        max_results: int = 100,
    ) -> SessionDetail:
        """A session's stored summary (``None`` if not recorded) and one page of its turns."""
        return cast("SessionDetail", self.run(
            "session", session_id=session_id, experiment_ids=list(experiment_ids) if experiment_ids else None,
            page_token=page_token, max_results=max_results,
        ))  # fmt: skip

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> TraceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def search_traces(
    experiment_ids: Sequence[str] | None = None,
    filter_string: str | None = None,
    max_results: int = 100,
    order_by: Sequence[str] | None = None,
    uri: str | None = None,
) -> pd.DataFrame:
    """Like ``mlflow.search_traces``: a DataFrame of matching traces from the default client."""
    with TraceClient(uri) as client:
        return client.search_traces_df(experiment_ids, filter_string, max_results, order_by)
