"""MLflow's read routes (trace search, get, batchGet, the traces.json artifact, experiments, server info).

MLflow clients upload spans as ``traces.json`` (``GET /version`` is a 404, so they never switch to
per-span OTLP posts) and read them back through ``batchGet`` / ``traces/get``: every trace read
through these routes carries ``mlflow.trace.spansLocation = TRACKING_STORE``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tracehouse.query import fetch_trace, get_traces, operation
from tracehouse.schemas.errors import InvalidRequest, NotFound
from tracehouse.schemas.mlflow import Trace, TraceInfo
from tracehouse.storage import Experiment, Experiments, Store

from ._http import Handler, guard, json_body, json_response
from ._write_routes import ARTIFACTS_PREFIX, parse_artifact_path

#: MLflow's ``BatchGetTraces`` takes at most this many ids per call.
MAX_BATCH_GET: Final = 100

Fresh = Callable[[], Awaitable[None]]


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


def mlflow_read_routes(store: Store, fresh: Fresh) -> tuple[list[Route], Route]:
    """MLflow's read routes, and the trace-info route, which must come after every other route (its
    ``{trace_id:path}`` would swallow the more specific ones)."""
    experiments = Experiments(store)
    search_op = operation("search")

    async def find_trace(trace_id: str) -> Trace:
        await fresh()
        return await run_in_threadpool(fetch_trace, store, trace_id)

    @guard
    async def search(request: Request) -> Response:
        params = search_op.parse_body(request.path_params, await json_body(request))
        params["include_spans"] = False
        await fresh()
        page = await run_in_threadpool(search_op.run, store, **params)
        out: dict[str, Any] = {}
        if page.traces:
            out["traces"] = [mlflow_info(t.info) for t in page.traces]
        if page.next_page_token:
            out["next_page_token"] = page.next_page_token
        return json_response(out)

    @guard
    async def trace_info(request: Request) -> Response:
        trace = await find_trace(request.path_params["trace_id"])
        return json_response({"trace": {"trace_info": mlflow_info(trace.info)}})

    @guard
    async def batch_get(request: Request) -> Response:
        ids = request.query_params.getlist("trace_ids")
        if not ids:
            raise InvalidRequest("trace_ids is required")
        if len(ids) > MAX_BATCH_GET:
            raise InvalidRequest(f"at most {MAX_BATCH_GET} trace_ids, not {len(ids)}")
        await fresh()
        traces = await run_in_threadpool(get_traces, store, ids, True)
        return json_response({"traces": [mlflow_trace(t) for t in traces]})

    @guard
    async def get_trace(request: Request) -> Response:
        trace_id = request.query_params.get("trace_id")
        if not trace_id:
            raise InvalidRequest("trace_id is required")
        return json_response({"trace": mlflow_trace(await find_trace(trace_id))})

    @guard
    async def get_artifact(request: Request) -> Response:
        _, trace_id, name = parse_artifact_path(request.path_params["path"])
        if name != "traces.json":
            raise NotFound(f"tracehouse stores no artifact {name!r}")
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

    def experiment_route(param: str, find: Callable[[str], Experiment | None], missing: str) -> Handler:
        """GetExperiment / GetExperimentByName: one query parameter, the experiment or a 404."""

        @guard
        async def handle(request: Request) -> Response:
            value = request.query_params.get(param) or ""
            if not value:
                raise InvalidRequest(f"{param} is required")
            exp = await run_in_threadpool(find, value)
            if exp is None:
                raise NotFound(missing.format(value))
            return json_response({"experiment": exp.to_dict()})

        return handle

    experiment_get = experiment_route("experiment_id", experiments.get, "No Experiment with id={} exists")
    experiment_by_name = experiment_route(
        "experiment_name", experiments.get_by_name, "Could not find experiment with name '{}'"
    )

    @guard
    async def experiment_create(request: Request) -> Response:
        body = await json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest("name is required and must be a non-empty string")
        tags = {str(t.get("key")): str(t.get("value")) for t in body.get("tags") or [] if isinstance(t, dict)}
        exp = await run_in_threadpool(experiments.create, name, str(body.get("artifact_location") or ""), tags)
        return json_response({"experiment_id": exp.experiment_id})

    @guard
    async def experiment_search(request: Request) -> Response:
        found = await run_in_threadpool(experiments.search)
        return json_response({"experiments": [e.to_dict() for e in found]})

    routes = [
        Route("/version", version),
        Route("/api/3.0/mlflow/server-info", server_info),
        Route("/api/2.0/mlflow/experiments/get", experiment_get),
        Route("/api/2.0/mlflow/experiments/get-by-name", experiment_by_name),
        Route("/api/2.0/mlflow/experiments/create", experiment_create, methods=["POST"]),
        Route("/api/2.0/mlflow/experiments/search", experiment_search, methods=["GET", "POST"]),
        Route("/api/3.0/mlflow/traces/search", search, methods=["POST"]),
        Route("/api/3.0/mlflow/traces/batchGet", batch_get),
        Route("/api/3.0/mlflow/traces/get", get_trace),
        Route(ARTIFACTS_PREFIX + "/{path:path}", get_artifact),
    ]
    return routes, Route("/api/3.0/mlflow/traces/{trace_id:path}", trace_info)
