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

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, cast

from tracehouse.schemas import settings
from tracehouse.schemas.errors import RemoteError, TracehouseError
from tracehouse.schemas.mlflow import Trace

from ._methods import ReadMethods, listed
from ._operations import ReadOperation, iterate, operation

if TYPE_CHECKING:
    import pandas as pd

    from tracehouse.storage import Store

    from ._reader import TracePage
    from ._sessions import SessionSummary
    from ._users import UserRollup

DEFAULT_URI = settings.SERVER_URI.default
PAGE_LIMIT = 500

T = TypeVar("T")
P = ParamSpec("P")


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


def _dataframe(
    search: Callable[Concatenate[TraceClient, P], PagedList[Trace]],
) -> Callable[Concatenate[TraceClient, P], pd.DataFrame]:
    """``search``, answered as a DataFrame with MLflow's ``search_traces`` columns."""

    def search_df(client: TraceClient, /, *args: P.args, **kwargs: P.kwargs) -> pd.DataFrame:
        from ._dataframe import traces_to_dataframe

        return traces_to_dataframe(search(client, *args, **kwargs))

    search_df.__doc__ = ":meth:`search_traces` as a DataFrame with MLflow's columns."
    return search_df


class TraceClient(ReadMethods):
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

    search_traces_df = _dataframe(search_traces)

    def get_trace(self, trace_id: str) -> Trace | None:
        """One trace with its spans, current tags and assessments, or ``None``."""
        try:
            return cast("Trace", self.run("trace", trace_id=trace_id))
        except TracehouseError as exc:
            if exc.http_status == 404:
                return None
            raise

    def _iterate(self, name: str, params: dict[str, Any]) -> Iterator[Any]:
        op = operation(name)
        flat = {k: listed(v) if k in ("experiment_ids", "order_by") else v for k, v in params.items()}
        return iterate(self.run, op, flat, PAGE_LIMIT)

    def iter_users(self, **kwargs: Any) -> Iterator[UserRollup]:
        """Every user, page by page (``kwargs`` as :meth:`list_users`)."""
        return self._iterate("users", kwargs)

    def list_users_df(self, *, max_results: int | None = 100, **kwargs: Any) -> pd.DataFrame:
        """Users and their rollups as a DataFrame (``kwargs`` as :meth:`list_users`), following pages
        until ``max_results`` (``None``: all)."""
        from ._dataframe import users_to_dataframe

        return users_to_dataframe(list(itertools.islice(self._iterate("users", kwargs), max_results)))

    def get_user_df(self, user_id: str, **kwargs: Any) -> pd.DataFrame:
        """A user's daily buckets as a DataFrame (``kwargs`` as :meth:`get_user`)."""
        from ._dataframe import users_to_dataframe

        return users_to_dataframe(self.get_user(user_id, **kwargs).days)

    def iter_sessions(self, user_id: str | None = None, **kwargs: Any) -> Iterator[SessionSummary]:
        """Every matching session, page by page (``kwargs`` as :meth:`list_sessions`)."""
        return self._iterate("sessions", {"user_id": user_id, **kwargs})

    def list_sessions_df(self, user_id: str | None = None, *, max_results: int | None = 100, **kwargs: Any
                         ) -> pd.DataFrame:  # fmt: skip
        """Sessions as a DataFrame (one row per session, the columns of :class:`SessionSummary`),
        following pages until ``max_results`` (``None``: all); ``kwargs`` as :meth:`list_sessions`."""
        from ._dataframe import sessions_to_dataframe

        items = itertools.islice(self._iterate("sessions", {"user_id": user_id, **kwargs}), max_results)
        return sessions_to_dataframe(list(items))

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
