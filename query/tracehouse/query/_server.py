"""The HTTP app: tracehouse's own JSON routes and UI, plus MLflow's trace REST API and OTLP/HTTP.

Reads are thin adapters over :class:`TraceReader`; the store calls block (chDB runs in process), so
they run in the thread pool. Writes (with a :class:`~tracehouse.gateway.Gateway`) go to Kafka; a read
first waits, boundedly, until the sink stored every write this server acknowledged.

MLflow clients upload spans as ``traces.json`` (``GET /version`` is a 404, so they never switch to
per-span OTLP posts) and read them back through ``batchGet`` / ``traces/get``: every trace read
through the MLflow routes carries ``mlflow.trace.spansLocation = TRACKING_STORE``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from tracehouse.storage import Store

from ._auth import AuthConfig, AuthMiddleware
from ._entities import Trace, TraceInfo
from ._experiments import ExperimentExists, Experiments
from ._http import ApiError, error_response, guard, json_body, json_response
from ._reader import TraceReader

if TYPE_CHECKING:
    from tracehouse.gateway import Gateway

MAX_PAGE: Final = 500
#: MLflow's ``BatchGetTraces`` takes at most this many ids per call.
MAX_BATCH_GET: Final = 100
ARTIFACTS_PREFIX: Final = "/api/2.0/mlflow-artifacts/artifacts"

log = logging.getLogger("tracehouse.server")


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


def mlflow_info(info: TraceInfo) -> dict[str, Any]:
    """TraceInfoV3 JSON as MLflow's client needs it to fetch spans: from this server (``TRACKING_STORE``)."""
    d = info.to_dict()
    tags = d.setdefault("tags", {})
    location = f"mlflow-artifacts:/{info.experiment_id}/traces/{info.trace_id}/artifacts"
    tags.setdefault("mlflow.artifactLocation", location)
    tags["mlflow.trace.spansLocation"] = "TRACKING_STORE"
    return d


def mlflow_trace(trace: Trace) -> dict[str, Any]:
    """One trace of ``batchGet`` / ``traces/get``: its info and its spans as OTel protobuf JSON."""
    return {"trace_info": mlflow_info(trace.info), "spans": [s.to_dict() for s in trace.data.spans]}


def create_app(
    store: Store,
    reader: TraceReader | None = None,
    *,
    gateway: Gateway | None = None,
    auth: AuthConfig | None = None,
    manage_gateway: bool = True,
) -> Any:
    """Build the ASGI app serving ``store``; with ``gateway`` it also accepts writes (started and
    stopped by the app's lifespan unless ``manage_gateway`` is false); with ``auth`` it requires
    the configured token."""
    rd = reader or TraceReader(store)
    experiments = Experiments(store)

    async def fresh() -> None:
        """Read-your-writes: wait (boundedly) for the sink to store what this server acknowledged."""
        if gateway is not None:
            await gateway.fence.wait()

    async def search(body: Mapping[str, Any], include_spans: bool) -> dict[str, Any]:
        await fresh()
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

    @guard
    async def th_search(request: Request) -> Response:
        body = await json_body(request)
        result = await search(body, bool(body.get("include_spans", True)))
        out: dict[str, Any] = {"traces": [t.to_dict() for t in result["traces"]]}
        if result["next_page_token"]:
            out["next_page_token"] = result["next_page_token"]
        return json_response(out)

    async def find_trace(trace_id: str, include_spans: bool = True) -> Trace:
        await fresh()
        trace = await run_in_threadpool(rd.get_trace, trace_id, include_spans)
        if trace is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Trace with ID '{trace_id}' not found")
        return trace

    async def existing_trace(request: Request, include_spans: bool = True) -> Trace:
        return await find_trace(request.path_params["trace_id"], include_spans)
    @guard
    async def th_get_trace(request: Request) -> Response:
        return json_response({"trace": (await existing_trace(request)).to_dict()})

    @guard
    async def th_user(request: Request) -> Response:
        await fresh()
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

    @guard
    async def th_users(request: Request) -> Response:
        await fresh()
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

    @guard
    async def th_session(request: Request) -> Response:
        await fresh()
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

    @guard
    async def th_sessions(request: Request) -> Response:
        await fresh()
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

    @guard
    async def mlflow_search(request: Request) -> Response:
        result = await search(await json_body(request), include_spans=False)
        out: dict[str, Any] = {}
        if result["traces"]:
            out["traces"] = [mlflow_info(t.info) for t in result["traces"]]
        if result["next_page_token"]:
            out["next_page_token"] = result["next_page_token"]
        return json_response(out)

    @guard
    async def mlflow_trace_info(request: Request) -> Response:
        trace = await existing_trace(request, include_spans=False)
        return json_response({"trace": {"trace_info": mlflow_info(trace.info)}})

    @guard
    async def mlflow_batch_get(request: Request) -> Response:
        ids = request.query_params.getlist("trace_ids")
        if not ids:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "trace_ids is required")
        if len(ids) > MAX_BATCH_GET:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"at most {MAX_BATCH_GET} trace_ids, not {len(ids)}")
        await fresh()
        traces = await run_in_threadpool(rd.get_traces, ids, True)
        return json_response({"traces": [mlflow_trace(t) for t in traces]})

    @guard
    async def mlflow_get_trace(request: Request) -> Response:
        trace_id = request.query_params.get("trace_id")
        if not trace_id:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "trace_id is required")
        return json_response({"trace": mlflow_trace(await find_trace(trace_id))})

    @guard
    async def get_artifact(request: Request) -> Response:
        from tracehouse.gateway import parse_artifact_path

        _, trace_id, name = parse_artifact_path(request.path_params["path"])
        if name != "traces.json":
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"tracehouse stores no artifact {name!r}")
        trace = await find_trace(trace_id)
        return json_response({"spans": [s.to_artifact_dict() for s in trace.data.spans]})

    async def version(request: Request) -> Response:
        # Deliberately not found: MLflow clients then upload a trace's spans in one traces.json
        # after StartTraceV3, instead of one OTLP post per span racing it.
        return PlainTextResponse("tracehouse does not report an MLflow version", status_code=404)

    async def server_info(request: Request) -> Response:
        return json_response({
            "store_type": "tracehouse", "workspaces_enabled": False, "trace_archival_enabled": False,
            "multipart_uploads_enabled": False, "multipart_downloads_enabled": False,
        })  # fmt: skip

    @guard
    async def experiment_get(request: Request) -> Response:
        experiment_id = request.query_params.get("experiment_id") or ""
        if not experiment_id:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "experiment_id is required")
        exp = await run_in_threadpool(experiments.get, experiment_id)
        if exp is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No Experiment with id={experiment_id} exists")
        return json_response({"experiment": exp.to_dict()})

    @guard
    async def experiment_by_name(request: Request) -> Response:
        name = request.query_params.get("experiment_name") or ""
        if not name:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "experiment_name is required")
        exp = await run_in_threadpool(experiments.get_by_name, name)
        if exp is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name '{name}'")
        return json_response({"experiment": exp.to_dict()})

    @guard
    async def experiment_create(request: Request) -> Response:
        body = await json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "name is required and must be a non-empty string")
        tags = {str(t.get("key")): str(t.get("value")) for t in body.get("tags") or [] if isinstance(t, dict)}
        try:
            exp = await run_in_threadpool(experiments.create, name, str(body.get("artifact_location") or ""), tags)
        except ExperimentExists as exc:
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", str(exc)) from None
        return json_response({"experiment_id": exp.experiment_id})

    @guard
    async def experiment_search(request: Request) -> Response:
        found = await run_in_threadpool(experiments.search)
        return json_response({"experiments": [e.to_dict() for e in found]})

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "store": "embedded" if store.embedded else "clickhouse"})

    async def index(request: Request) -> Response:
        page = resources.files("tracehouse.query").joinpath("_ui.html").read_text()
        return HTMLResponse(page)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "ENDPOINT_NOT_FOUND", f"no route for {request.method} {request.url.path}")

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/api/tracehouse/v1/traces/search", th_search, methods=["POST"]),
        Route("/api/tracehouse/v1/traces/{trace_id:path}", th_get_trace),
        Route("/api/tracehouse/v1/users", th_users),
        Route("/api/tracehouse/v1/users/{user_id:path}", th_user),
        Route("/api/tracehouse/v1/sessions", th_sessions),
        Route("/api/tracehouse/v1/sessions/{session_id:path}", th_session),
        Route("/version", version),
        Route("/api/3.0/mlflow/server-info", server_info),
        Route("/api/2.0/mlflow/experiments/get", experiment_get),
        Route("/api/2.0/mlflow/experiments/get-by-name", experiment_by_name),
        Route("/api/2.0/mlflow/experiments/create", experiment_create, methods=["POST"]),
        Route("/api/2.0/mlflow/experiments/search", experiment_search, methods=["GET", "POST"]),
        Route("/api/3.0/mlflow/traces/search", mlflow_search, methods=["POST"]),
        Route("/api/3.0/mlflow/traces/batchGet", mlflow_batch_get),
        Route("/api/3.0/mlflow/traces/get", mlflow_get_trace),
        Route(ARTIFACTS_PREFIX + "/{path:path}", get_artifact),
    ]
    if gateway is not None:
        from tracehouse.gateway import write_routes

        routes += write_routes(gateway)
    # Last: its {trace_id:path} would swallow the more specific GET routes above.
    routes.append(Route("/api/3.0/mlflow/traces/{trace_id:path}", mlflow_trace_info))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if gateway is None or not manage_gateway:
            yield
            return
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(routes=routes, exception_handlers={404: not_found}, lifespan=lifespan)
    if auth is not None and auth.enabled:
        return AuthMiddleware(app, auth)
    return app
