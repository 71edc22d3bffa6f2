"""The HTTP query API: tracehouse's own JSON routes plus the read side of MLflow's trace REST API.

Every route is a thin adapter over :class:`TraceReader`; the store calls block (chDB runs in
process), so they run in the thread pool. Errors are MLflow-shaped ``{"error_code", "message"}``
with a 4xx for bad input: MLflow's client retries any 5xx for minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tracehouse.storage import Store

from ._entities import Trace
from ._reader import TraceReader

MAX_PAGE = 500

log = logging.getLogger("tracehouse.server")

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """An error with an MLflow error code and HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return json_response({"error_code": code, "message": message}, status)


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message)
        except ValueError as exc:  # typed filter / order_by / page token errors are ValueErrors
            return _error(400, getattr(exc, "error_code", "INVALID_PARAMETER_VALUE"), str(exc))
        except Exception as exc:  # keep the MLflow error shape even for our own failures
            log.exception("request %s %s failed", request.method, request.url.path)
            return _error(500, "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}")

    return wrapped


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "MALFORMED_REQUEST", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "MALFORMED_REQUEST", "request body must be a JSON object")
    return body


def _max_results(value: Any, default: int = 100) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"max_results must be an integer, got {value!r}") from None
    if n < 1:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"max_results must be positive, got {n}")
    return min(n, MAX_PAGE)


def _int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"{name} must be an integer, got {value!r}") from None


def _optional_str(body: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = body.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"{name} must be a string, got {type(value).__name__}")
        return value
    return None


def _experiment_ids(body: Mapping[str, Any]) -> list[str] | None:
    raw = body.get("experiment_ids") or []
    locations = body.get("locations") or []
    if not isinstance(raw, list) or not isinstance(locations, list):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "experiment_ids and locations must be lists")
    ids: list[str] = [str(e) for e in raw]
    for loc in locations:
        exp = (loc or {}).get("mlflow_experiment") or {} if isinstance(loc, dict) else {}
        if "experiment_id" in exp:
            ids.append(str(exp["experiment_id"]))
    return ids or None


def _order_by(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ApiError(400, "INVALID_PARAMETER_VALUE", "order_by must be a list of strings")


def create_app(store: Store, reader: TraceReader | None = None) -> Starlette:
    """Build the ASGI app serving ``store``."""
    rd = reader or TraceReader(store)

    async def search(body: Mapping[str, Any], include_spans: bool) -> dict[str, Any]:
        page = await run_in_threadpool(
            rd.search_traces,
            experiment_ids=_experiment_ids(body),
            filter_string=_optional_str(body, "filter", "filter_string"),
            max_results=_max_results(body.get("max_results")),
            order_by=_order_by(body.get("order_by")),
            page_token=_optional_str(body, "page_token"),
            include_spans=include_spans,
        )
        return {"traces": page.traces, "next_page_token": page.next_page_token}

    @_guard
    async def th_search(request: Request) -> Response:
        body = await _json_body(request)
        result = await search(body, bool(body.get("include_spans", True)))
        out: dict[str, Any] = {"traces": [t.to_dict() for t in result["traces"]]}
        if result["next_page_token"]:
            out["next_page_token"] = result["next_page_token"]
        return json_response(out)

    async def existing_trace(request: Request) -> Trace:
        trace_id = request.path_params["trace_id"]
        trace = await run_in_threadpool(rd.get_trace, trace_id)
        if trace is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Trace with ID '{trace_id}' not found")
        return trace

    @_guard
    async def th_get_trace(request: Request) -> Response:
        return json_response({"trace": (await existing_trace(request)).to_dict()})

    @_guard
    async def th_user(request: Request) -> Response:
        # "user" is the summary (the shape older clients read); "rollup" the rollup with daily buckets.
        user_id = request.path_params["user_id"]
        q = request.query_params
        exps = q.getlist("experiment_id") or None
        source = q.get("source") or "auto"
        if source not in ("auto", "rollups", "traces"):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"source must be auto, rollups or traces, not {source!r}")
        summary = await run_in_threadpool(rd.user_summary, user_id, exps, source)  # type: ignore[arg-type]
        detail = await run_in_threadpool(
            rd.get_user, user_id, exps, _int_param(q.get("since"), "since"), _int_param(q.get("until"), "until")
        )
        return json_response({"user": summary.to_dict(), "rollup": detail.to_dict()})

    @_guard
    async def th_users(request: Request) -> Response:
        q = request.query_params
        page = await run_in_threadpool(
            rd.list_users,
            experiment_ids=q.getlist("experiment_id") or None,
            since=_int_param(q.get("since"), "since"),
            until=_int_param(q.get("until"), "until"),
            order_by=q.getlist("order_by") or None,
            max_results=_max_results(q.get("max_results"), default=100),
            page_token=q.get("page_token") or None,
        )
        return json_response(page.to_dict())

    @_guard
    async def th_session(request: Request) -> Response:
        # "session" is the timeline (the shape older clients read); "summary" the stored record or null.
        session_id = request.path_params["session_id"]
        q = request.query_params
        detail = await run_in_threadpool(
            rd.get_session,
            session_id,
            q.get("page_token") or None,
            _max_results(q.get("max_results"), default=100),
            q.getlist("experiment_id") or None,
        )
        summary = detail.summary.to_dict() if detail.summary is not None else None
        return json_response({"session": detail.timeline.to_dict(), "summary": summary, "feedback": detail.feedback})

    @_guard
    async def th_sessions(request: Request) -> Response:
        q = request.query_params
        page = await run_in_threadpool(
            rd.list_sessions,
            user_id=q.get("user_id") or q.get("user") or None,
            experiment_ids=q.getlist("experiment_id") or None,
            status=q.get("status") or None,
            since=_int_param(q.get("since"), "since"),
            until=_int_param(q.get("until"), "until"),
            order_by=q.getlist("order_by") or None,
            max_results=_max_results(q.get("max_results"), default=100),
            page_token=q.get("page_token") or None,
        )
        return json_response(page.to_dict())

    @_guard
    async def mlflow_search(request: Request) -> Response:
        result = await search(await _json_body(request), include_spans=False)
        out: dict[str, Any] = {}
        if result["traces"]:
            out["traces"] = [t.info.to_dict() for t in result["traces"]]
        if result["next_page_token"]:
            out["next_page_token"] = result["next_page_token"]
        return json_response(out)

    @_guard
    async def mlflow_trace_info(request: Request) -> Response:
        return json_response({"trace": {"trace_info": (await existing_trace(request)).info.to_dict()}})

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "store": "embedded" if store.embedded else "clickhouse"})

    async def index(request: Request) -> Response:
        page = resources.files("tracehouse.query").joinpath("_ui.html").read_text()
        return HTMLResponse(page)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, "ENDPOINT_NOT_FOUND", f"no route for {request.method} {request.url.path}")

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/api/tracehouse/v1/traces/search", th_search, methods=["POST"]),
        Route("/api/tracehouse/v1/traces/{trace_id:path}", th_get_trace),
        Route("/api/tracehouse/v1/users", th_users),
        Route("/api/tracehouse/v1/users/{user_id:path}", th_user),
        Route("/api/tracehouse/v1/sessions", th_sessions),
        Route("/api/tracehouse/v1/sessions/{session_id:path}", th_session),
        Route("/api/3.0/mlflow/traces/search", mlflow_search, methods=["POST"]),
        Route("/api/3.0/mlflow/traces/{trace_id:path}", mlflow_trace_info),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found})
