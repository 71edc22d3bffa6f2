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

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import quote

from ._entities import Trace

if TYPE_CHECKING:
    import pandas as pd

    from tracehouse.storage import Store

    from ._analysis import SessionTimeline, UserSummary
    from ._sessions import SessionDetail, SessionPage, SessionSummary
    from ._users import UserDetail, UserPage, UserRollup

DEFAULT_URI = "http://127.0.0.1:5000"
PAGE_LIMIT = 500

T = TypeVar("T")


class PagedList(list[T], Generic[T]):
    """A list with the token of the next page (``None`` on the last page), as MLflow's."""

    def __init__(self, items: Sequence[T], token: str | None) -> None:
        super().__init__(items)
        self.token = token


class RemoteError(ValueError):
    """The tracehouse server rejected a request. ``error_code`` is MLflow's code for it."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code = status, error_code


class _Backend(Protocol):
    def search_page(
        self, experiment_ids: list[str] | None, filter_string: str | None, max_results: int,
        order_by: list[str] | None, page_token: str | None, include_spans: bool,
    ) -> tuple[list[Trace], str | None]: ...  # fmt: skip

    def get_trace(self, trace_id: str) -> Trace | None: ...

    def user_summary(self, user_id: str, experiment_ids: list[str] | None, source: str) -> UserSummary: ...

    def list_users(self, query: dict[str, Any]) -> UserPage: ...

    def get_user(self, user_id: str, query: dict[str, Any]) -> UserDetail: ...

    def session_timeline(
        self, session_id: str, experiment_ids: list[str] | None, page_token: str | None, max_results: int
    ) -> SessionTimeline: ...

    def list_sessions(self, query: dict[str, Any]) -> SessionPage: ...

    def get_session(
        self, session_id: str, experiment_ids: list[str] | None, page_token: str | None, max_results: int
    ) -> SessionDetail: ...

    def close(self) -> None: ...


class _StoreBackend:
    def __init__(self, store: Store, owned: bool) -> None:
        from ._reader import TraceReader

        self._store, self._owned = store, owned
        self._reader = TraceReader(store)

    def search_page(
        self, experiment_ids: list[str] | None, filter_string: str | None, max_results: int,
        order_by: list[str] | None, page_token: str | None, include_spans: bool,
    ) -> tuple[list[Trace], str | None]:  # fmt: skip
        page = self._reader.search_traces(
            experiment_ids=experiment_ids, filter_string=filter_string, max_results=max_results,
            order_by=order_by, page_token=page_token, include_spans=include_spans,
        )  # fmt: skip
        return list(page.traces), page.next_page_token

    def get_trace(self, trace_id: str) -> Trace | None:
        return self._reader.get_trace(trace_id)

    def user_summary(self, user_id: str, experiment_ids: list[str] | None, source: str) -> UserSummary:
        return self._reader.user_summary(user_id, experiment_ids, source)  # type: ignore[arg-type]

    def list_users(self, query: dict[str, Any]) -> UserPage:
        return self._reader.list_users(**query)

    def get_user(self, user_id: str, query: dict[str, Any]) -> UserDetail:
        return self._reader.get_user(user_id, **query)

    def session_timeline(
        self, session_id: str, experiment_ids: list[str] | None, page_token: str | None, max_results: int
    ) -> SessionTimeline:
        return self._reader.session_timeline(session_id, experiment_ids, page_token, max_results)

    def list_sessions(self, query: dict[str, Any]) -> SessionPage:
        return self._reader.list_sessions(**query)

    def get_session(
        self, session_id: str, experiment_ids: list[str] | None, page_token: str | None, max_results: int
    ) -> SessionDetail:
        return self._reader.get_session(session_id, page_token, max_results, experiment_ids)

    def close(self) -> None:
        if self._owned:
            self._store.close()


class _HttpBackend:
    def __init__(self, uri: str, timeout: float) -> None:
        import httpx

        self._http = httpx.Client(base_url=uri.rstrip("/"), timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionError(
                f"cannot reach the tracehouse server at {self._http.base_url}: {exc}. "
                "Is `tracehouse up` running? Set TRACEHOUSE_URI or pass a chdb:// or clickhouse:// URI."
            ) from None
        body: dict[str, Any] = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            raise RemoteError(resp.status_code, str(body.get("error_code", "INTERNAL_ERROR")),
                              str(body.get("message", resp.text)))  # fmt: skip
        return body

    def search_page(
        self, experiment_ids: list[str] | None, filter_string: str | None, max_results: int,
        order_by: list[str] | None, page_token: str | None, include_spans: bool,
    ) -> tuple[list[Trace], str | None]:  # fmt: skip
        body: dict[str, Any] = {"max_results": max_results, "include_spans": include_spans}
        if experiment_ids:
            body["experiment_ids"] = experiment_ids
        if filter_string:
            body["filter"] = filter_string
        if order_by:
            body["order_by"] = order_by
        if page_token:
            body["page_token"] = page_token
        out = self._call("POST", "/api/tracehouse/v1/traces/search", json=body)
        return [Trace.from_dict(t) for t in out.get("traces", [])], out.get("next_page_token")

    def get_trace(self, trace_id: str) -> Trace | None:
        try:
            out = self._call("GET", f"/api/tracehouse/v1/traces/{quote(trace_id, safe='')}")
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise
        return Trace.from_dict(out["trace"])

    def user_summary(self, user_id: str, experiment_ids: list[str] | None, source: str) -> UserSummary:
        from ._analysis import UserSummary

        params: dict[str, Any] = {"source": source}
        if experiment_ids:
            params["experiment_id"] = experiment_ids
        out = self._call("GET", f"/api/tracehouse/v1/users/{quote(user_id, safe='')}", params=params)
        return UserSummary.from_dict(out["user"])

    @staticmethod
    def _params(query: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, value in query.items():
            if value is None or value == [] or value == "":
                continue
            params["experiment_id" if name == "experiment_ids" else name] = value
        return params

    def list_users(self, query: dict[str, Any]) -> UserPage:
        from ._users import UserPage

        return UserPage.from_dict(self._call("GET", "/api/tracehouse/v1/users", params=self._params(query)))

    def get_user(self, user_id: str, query: dict[str, Any]) -> UserDetail:
        from ._users import UserDetail

        out = self._call("GET", f"/api/tracehouse/v1/users/{quote(user_id, safe='')}", params=self._params(query))
        return UserDetail.from_dict(out["rollup"])

    def session_timeline(
        self, session_id: str, experiment_ids: list[str] | None, page_token: str | None, max_results: int
    ) -> SessionTimeline:
        from ._analysis import SessionTimeline

        params: dict[str, Any] = {"max_results": max_results}
        if experiment_ids:
            params["experiment_id"] = experiment_ids
        if page_token:
            params["page_token"] = page_token
        out = self._call("GET", f"/api/tracehouse/v1/sessions/{quote(session_id, safe='')}", params=params)
        return SessionTimeline.from_dict(out["session"])

    def list_sessions(self, query: dict[str, Any]) -> SessionPage:
        from ._sessions import SessionPage

        return SessionPage.from_dict(self._call("GET", "/api/tracehouse/v1/sessions", params=self._params(query)))

    def get_session(
        self, session_id: str, experiment_ids: list[str] | None, page_token: str | None, max_results: int
    ) -> SessionDetail:
        from ._analysis import SessionTimeline
        from ._sessions import SessionDetail, SessionSummary

        params: dict[str, Any] = {"max_results": max_results}
        if experiment_ids:
            params["experiment_id"] = experiment_ids
        if page_token:
            params["page_token"] = page_token
        out = self._call("GET", f"/api/tracehouse/v1/sessions/{quote(session_id, safe='')}", params=params)
        summary = out.get("summary")
        return SessionDetail(session_id=session_id,
                             summary=SessionSummary.from_dict(summary) if summary else None,
                             timeline=SessionTimeline.from_dict(out["session"]),
                             feedback={str(k): int(v) for k, v in (out.get("feedback") or {}).items()})  # fmt: skip

    def close(self) -> None:
        self._http.close()


class TraceClient:
    """Search and analyse traces. ``uri``: explicit > ``$TRACEHOUSE_URI`` > http://127.0.0.1:5000."""

    def __init__(self, uri: str | None = None, *, timeout: float = 30.0) -> None:
        self.uri = uri or os.environ.get("TRACEHOUSE_URI") or DEFAULT_URI
        scheme = self.uri.split(":", 1)[0].lower()
        self._backend: _Backend
        if scheme in ("http", "https"):
            self._backend = _HttpBackend(self.uri, timeout)
        else:
            from tracehouse.storage import Store

            self._backend = _StoreBackend(Store(self.uri), owned=True)

    @classmethod
    def from_store(cls, store: Store) -> TraceClient:
        """A client over an already-open store (the caller keeps ownership)."""
        client = cls.__new__(cls)
        client.uri = store.uri
        client._backend = _StoreBackend(store, owned=False)
        return client

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
            traces, token = self._backend.search_page(exps, filter_string, want, orders, token, include_spans)
            out.extend(traces)
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
        return self._backend.get_trace(trace_id)

    def user_summary(
        self, user_id: str, *, experiment_ids: Sequence[str] | None = None, source: str = "auto"
    ) -> UserSummary:
        """A user's interactions, unique sessions, response times and errors: from the per-user rollups
        (``source="rollups"``), from the raw traces (``"traces"``), or the rollups when the user has
        any (``"auto"``)."""
        return self._backend.user_summary(user_id, list(experiment_ids) if experiment_ids else None, source)

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
        return self._backend.list_users({
            "experiment_ids": list(experiment_ids) if experiment_ids else None, "since": since, "until": until,
            "order_by": orders, "max_results": max_results, "page_token": page_token,
        })  # fmt: skip

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
        return self._backend.get_user(user_id, {
            "experiment_ids": list(experiment_ids) if experiment_ids else None, "since": since, "until": until,
        })  # fmt: skip

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
        return self._backend.session_timeline(
            session_id, list(experiment_ids) if experiment_ids else None, page_token, max_results
        )

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
        return self._backend.list_sessions({
            "user_id": user_id, "experiment_ids": list(experiment_ids) if experiment_ids else None,
            "status": status, "since": since, "until": until, "order_by": orders,
            "max_results": max_results, "page_token": page_token,
        })  # fmt: skip

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
        return self._backend.get_session(
            session_id, list(experiment_ids) if experiment_ids else None, page_token, max_results
        )

    def close(self) -> None:
        self._backend.close()

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
