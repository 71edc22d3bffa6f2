"""Read traces from ClickHouse: MLflow-compatible search with keyset pages, and get by id."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from tracehouse.schemas.errors import InvalidFilterError, InvalidRequest, NotFound
from tracehouse.schemas.mlflow import Trace, TraceData, TraceInfo
from tracehouse.storage import Store

from ._compile import compile_filter
from ._filter import Comparison, parse_filter
from ._hydrate import TRACE_SELECT, info_from_row, read_assessments, read_spans, read_tags
from ._methods import ReadMethods
from ._operations import Param, ReadOperation, operation, read_operation
from ._order import keyset_predicate, order_by_sql, parse_order_by, sort_columns
from ._paging import MAX_PAGE_SIZE, decode_page_token, encode_page_token, fingerprint, page_size
from ._params import Params

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TracePage:
    """One page of a search. ``next_page_token`` is set whenever the page is full (MLflow's rule),
    so the last page may be empty."""

    traces: list[Trace] = field(default_factory=list)
    next_page_token: str | None = None

    def __iter__(self) -> Iterator[Trace]:
        return iter(self.traces)

    def __len__(self) -> int:
        return len(self.traces)

    def to_dict(self) -> dict[str, Any]:
        """The SearchTracesV3 response body: ``{"traces": [TraceInfoV3...], "next_page_token": ...}``."""
        d: dict[str, Any] = {}
        if self.traces:
            d["traces"] = [t.info.to_dict() for t in self.traces]
        if self.next_page_token:
            d["next_page_token"] = self.next_page_token
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TracePage:
        return cls(traces=[Trace(TraceInfo.from_dict(i)) for i in d.get("traces") or []],
                   next_page_token=d.get("next_page_token") or None)


def _regex_error(exc: Exception, comparisons: Sequence[Comparison]) -> InvalidFilterError | None:
    text = str(exc)
    if "re2" not in text and "CANNOT_COMPILE_REGEXP" not in text and "Code: 427" not in text:
        return None
    rlike = next((c for c in comparisons if c.comparator == "RLIKE"), None)
    reason = text.split("DB::Exception:", 1)[-1].strip().split(". Look at", 1)[0]
    return InvalidFilterError(f"Invalid regular expression in filter string: {reason}",
                              position=rlike.position if rlike else None)


def _query(store: Store, sql: str, params: dict[str, Any], comparisons: Sequence[Comparison] = ()
           ) -> list[tuple[Any, ...]]:  # fmt: skip
    try:
        return store.query(sql, params)
    except Exception as exc:
        error = _regex_error(exc, comparisons)
        if error is not None:
            raise error from exc
        raise


def _complete(store: Store, rows: Sequence[Sequence[Any]], include_spans: bool) -> list[Trace]:
    if not rows:
        return []
    ids = [r[0] for r in rows]
    tags = read_tags(store, ids)
    assessments = read_assessments(store, ids)
    spans = read_spans(store, ids, [r[1] for r in rows]) if include_spans else {}
    return [
        Trace(
            info=info_from_row(r, tags=tags.get(r[0], {}), assessments=assessments.get(r[0], [])),
            data=TraceData(spans=spans.get(r[0], [])),
        )
        for r in rows
    ]


def _experiment_ids(body: Mapping[str, Any]) -> list[str] | None:
    """``experiment_ids`` and MLflow 3's ``locations`` of a search body, together."""
    raw = body.get("experiment_ids") or []
    locations = body.get("locations") or []
    if not isinstance(raw, list) or not isinstance(locations, list):
        raise InvalidRequest("experiment_ids and locations must be lists")
    ids: list[str] = [str(e) for e in raw]
    for loc in locations:
        exp = (loc or {}).get("mlflow_experiment") or {} if isinstance(loc, dict) else {}
        if "experiment_id" in exp:
            ids.append(str(exp["experiment_id"]))
    return ids or None


def _page_body(page: TracePage) -> dict[str, Any]:
    out: dict[str, Any] = {"traces": [t.to_dict() for t in page.traces]}
    if page.next_page_token:
        out["next_page_token"] = page.next_page_token
    return out


def _page_from_body(d: Mapping[str, Any]) -> TracePage:
    return TracePage(traces=[Trace.from_dict(t) for t in d.get("traces") or []],
                     next_page_token=d.get("next_page_token") or None)  # fmt: skip


@read_operation("search", "/api/tracehouse/v1/traces/search", method="POST", cli="search", items="traces",
                encode=_page_body, decode=_page_from_body,
                help="Search traces with MLflow's filter syntax.")  # fmt: skip
def search_page(
    store: Store,
    experiment_ids: Annotated[Sequence[str] | None, Param(
        "Restrict to these experiments (repeatable).", cli="experiment-id", read_body=_experiment_ids)] = None,
    filter_string: Annotated[str | None, Param(
        "MLflow's filter, e.g. \"metadata.`mlflow.trace.user` = 'user-0001' AND status = 'ERROR'\"",
        wire="filter", aliases=("filter_string",), argument=True, cli="filter")] = None,
    max_results: Annotated[int, Param("How many traces at most.")] = 100,
    order_by: Annotated[Sequence[str] | None, Param(
        'e.g. "timestamp ASC" (repeatable). Default: newest first.')] = None,
    page_token: Annotated[str | None, Param("Continue from a previous page.", cli="")] = None,
    include_spans: Annotated[bool, Param("Also read every trace's spans.", cli="", cli_default=False)] = True,
) -> TracePage:
    """One page of traces matching ``filter_string`` (MLflow's grammar) in ``experiment_ids`` (all
    experiments when None or empty), ordered by ``order_by`` (newest first by default).

    ``max_results`` is capped at 500; pass the returned ``next_page_token`` back (with the same other
    arguments) for the next page. Raises :class:`InvalidFilterError`, :class:`InvalidOrderByError`,
    :class:`InvalidPageTokenError` or :class:`InvalidParameterError` on bad input.

    Reads are parameterised SQL; a page costs one query for the traces plus one each for their tags,
    assessments and (if asked) spans. Tags, assessments and spans are read with ``FINAL`` (tags and
    assessments change). The search itself is not: a trace row is written once (the sink lets the first
    write of a trace id win), so the only duplicates are identical replays, which ``LIMIT 1 BY
    trace_id`` hides; ``FINAL`` made the sort-key expansion read up to 5x the granules of wide columns
    (session filter at 10 M traces: 44 -> 15 ms).
    """
    limit = page_size(max_results)
    comparisons = parse_filter(filter_string)
    keys = parse_order_by(order_by)
    experiments = sorted(set(experiment_ids)) if experiment_ids else None
    orders = [order_by] if isinstance(order_by, str) else list(order_by or [])
    search = fingerprint("traces", experiments, (filter_string or "").strip(), orders)

    params = Params()
    where: list[str] = []
    scope = None
    if experiments:
        scope = params.add(experiments, "Array(String)")
        where.append(f"t.experiment_id IN {scope}")
    where.extend(compile_filter(comparisons, params, scope))
    columns, joins = sort_columns(keys, params)
    types = [int if c.ch_type != "String" else str for c in columns]
    if page_token:
        body = decode_page_token(page_token, search, types)
        where.append(keyset_predicate(columns, body["k"], params))
    select = ", ".join([TRACE_SELECT, *(f"{c.expr} AS _s{i}" for i, c in enumerate(columns))])
    sql = (
        f"SELECT {select} FROM traces AS t {' '.join(joins)} "
        f"WHERE {' AND '.join(where) or '1'} "
        f"ORDER BY {order_by_sql(columns)} LIMIT 1 BY t.trace_id LIMIT {int(limit)}"
    )
    rows = _query(store, sql, params.values, comparisons)
    traces = _complete(store, rows, include_spans)
    next_token = None
    if len(rows) == limit:
        key = list(rows[-1][-len(columns):])
        next_token = encode_page_token(key, search)
    return TracePage(traces=traces, next_page_token=next_token)


def get_traces(store: Store, trace_ids: Sequence[str], include_spans: bool = True) -> list[Trace]:
    """The traces with these ids, in the order given; unknown ids are skipped."""
    ids = list(dict.fromkeys(trace_ids))
    if not ids:
        return []
    rows = store.query(
        f"SELECT {TRACE_SELECT} FROM traces AS t FINAL WHERE t.trace_id IN {{ids:Array(String)}} "
        "LIMIT 1 BY t.trace_id",
        {"ids": ids},
    )
    found = {t.info.trace_id: t for t in _complete(store, rows, include_spans)}
    return [found[i] for i in ids if i in found]


def _trace_body(trace: Trace) -> dict[str, Any]:
    return {"trace": trace.to_dict()}


def _trace_from_body(d: Mapping[str, Any]) -> Trace:
    return Trace.from_dict(d["trace"])


@read_operation("trace", "/api/tracehouse/v1/traces/{trace_id}", cli="trace", encode=_trace_body,
                decode=_trace_from_body)  # fmt: skip
def fetch_trace(store: Store, trace_id: str) -> Trace:
    """One trace with its spans, current tags and assessments. Raises :class:`NotFound` if unknown."""
    found = get_traces(store, [trace_id])
    if not found:
        raise NotFound(f"Trace with ID '{trace_id}' not found")
    return found[0]


class _OnStore(Generic[P, R]):
    """A :class:`TraceReader` method that is a query function called with the reader's store first:
    its signature and docstring are the function's."""

    def __init__(self, fn: Callable[Concatenate[Store, P], R]) -> None:
        self._fn = fn
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, reader: None, owner: type[Any]) -> _OnStore[P, R]: ...

    @overload
    def __get__(self, reader: TraceReader, owner: type[Any]) -> Callable[P, R]: ...

    def __get__(self, reader: TraceReader | None, owner: type[Any]) -> _OnStore[P, R] | Callable[P, R]:
        if reader is None:
            return self
        fn, store = self._fn, reader.store

        def bound(*args: P.args, **kwargs: P.kwargs) -> R:
            return fn(store, *args, **kwargs)

        return bound


class TraceReader(ReadMethods):
    """Searches and reads traces of a :class:`~tracehouse.storage.Store`: the read operations of
    :mod:`tracehouse.query` bound to one store, as typed methods (the users and sessions ones are
    :class:`~tracehouse.query._methods.ReadMethods`'). ``run(name, **params)`` runs any registered
    read operation, those added later included.
    """

    #: Most traces one :meth:`search_traces` call returns; larger ``max_results`` are capped.
    MAX_PAGE_SIZE = MAX_PAGE_SIZE

    def __init__(self, store: Store) -> None:
        self.store = store

    def run(self, op: str | ReadOperation[Any], /, **params: Any) -> Any:
        """Run a read operation (by name or object; see :func:`tracehouse.query.operations`) on this store."""
        return (operation(op) if isinstance(op, str) else op).run(self.store, **params)

    search_traces = _OnStore(search_page)
    get_traces = _OnStore(get_traces)

    def iter_traces(
        self,
        experiment_ids: Sequence[str] | None = None,
        filter_string: str | None = None,
        order_by: Sequence[str] | None = None,
        include_spans: bool = True,
        batch_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[Trace]:
        """Every matching trace, page by page (lazily; memory bounded by one page)."""
        token: str | None = None
        while True:
            page = self.search_traces(experiment_ids, filter_string, batch_size, order_by, token, include_spans)
            yield from page.traces
            token = page.next_page_token
            if not token:
                return

    def get_trace(self, trace_id: str, include_spans: bool = True) -> Trace | None:
        """The trace with its current tags, assessments and (by default) spans; None if unknown."""
        found = get_traces(self.store, [trace_id], include_spans)
        return found[0] if found else None

    def get_trace_info(self, trace_id: str) -> TraceInfo | None:
        """The trace's info (tags and assessments included, no spans); None if unknown."""
        trace = self.get_trace(trace_id, include_spans=False)
        return None if trace is None else trace.info


def collect_traces(search: Callable[..., TracePage], max_results: int | None = None, **kwargs: Any
                   ) -> list[Trace]:
    """Honour a ``max_results`` larger than one page by following page tokens.

    ``search`` is any callable with :meth:`TraceReader.search_traces`' keyword arguments (the reader's
    method, or an HTTP client's); ``max_results=None`` collects every match.
    """
    out: list[Trace] = []
    token = kwargs.pop("page_token", None)
    while max_results is None or len(out) < max_results:
        want = MAX_PAGE_SIZE if max_results is None else min(MAX_PAGE_SIZE, max_results - len(out))
        page = search(max_results=want, page_token=token, **kwargs)
        out.extend(page.traces)
        token = page.next_page_token
        if not token:
            break
    return out if max_results is None else out[:max_results]

