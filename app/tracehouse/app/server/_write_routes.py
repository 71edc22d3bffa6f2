"""The write routes of MLflow's trace REST API and OTLP/HTTP, as Starlette routes over a Gateway.

A route answers only after Kafka acknowledged every event of the request, so an acknowledged write
is durable and, through the read-your-writes fence, visible to this server's next read.
"""

from __future__ import annotations

import re
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracehouse.gateway import (
    JSON,
    PROTOBUF,
    Gateway,
    artifact_spans,
    assessment_from_request,
    decompress,
    export_events,
    export_response,
    parse_request,
    spans_events,
    tag_event,
    trace_info_events,
)
from tracehouse.schemas import IMMUTABLE_TAGS, TRACE_ID_PATTERN
from tracehouse.schemas.errors import InvalidRequest, NotFound
from tracehouse.schemas.mlflow import TraceInfo

from ._http import guard, json_body, json_response

ARTIFACT_LOCATION: Final = "mlflow.artifactLocation"
SPANS_LOCATION: Final = "mlflow.trace.spansLocation"
INFO_FINALIZED: Final = "mlflow.trace.infoFinalized"
EXPERIMENT_HEADER: Final = "x-mlflow-experiment-id"
ARTIFACTS_PREFIX: Final = "/api/2.0/mlflow-artifacts/artifacts"


def artifact_location(experiment_id: str, trace_id: str) -> str:
    """Where the MLflow client uploads (and finds) a trace's ``traces.json``."""
    return f"mlflow-artifacts:/{experiment_id}/traces/{trace_id}/artifacts"


def parse_artifact_path(path: str) -> tuple[str, str, str]:
    """``<exp>/traces/<trace id>/artifacts/<file>`` → (experiment id, trace id, file)."""
    parts = path.strip("/").split("/")
    if len(parts) < 5 or parts[1] != "traces" or parts[3] != "artifacts":
        raise NotFound(f"no trace artifact at {path!r}")
    return parts[0], parts[2], "/".join(parts[4:])


def _trace_id(request: Request) -> str:
    trace_id: str = request.path_params["trace_id"]
    if re.match(TRACE_ID_PATTERN, trace_id) is None:
        raise InvalidRequest(f"invalid trace id {trace_id!r}: expected 'tr-' + 32 lowercase hex digits")
    return trace_id


def write_routes(gateway: Gateway) -> list[Route]:
    @guard
    async def start_trace(request: Request) -> Response:
        body = await json_body(request)
        trace, assessments = trace_info_events(body)
        await gateway.publish([trace, *assessments])
        # Echo the info with what the server adds. Not "spansLocation": the client must upload
        # traces.json to the artifact location.
        raw = body.get("trace", body)
        info = TraceInfo.from_dict(raw.get("trace_info") or raw.get("traceInfo") or raw).to_dict()
        info.setdefault("trace_metadata", {})[INFO_FINALIZED] = "true"
        info.setdefault("tags", {})[ARTIFACT_LOCATION] = artifact_location(trace.experiment_id, trace.trace_id)
        return json_response({"trace": {"trace_info": info}})

    @guard
    async def put_artifact(request: Request) -> Response:
        experiment_id, trace_id, name = parse_artifact_path(request.path_params["path"])
        if name != "traces.json":
            raise InvalidRequest(f"tracehouse stores spans (traces.json) only, not {name!r}", "NOT_IMPLEMENTED", 501)
        spans = artifact_spans(trace_id, await request.body())
        if spans:
            known = gateway.identity(trace_id)
            events = spans_events(
                trace_id, spans, experiment_id=known.experiment_id if known else experiment_id,
                timestamp_ms=known.timestamp_ms if known else None,
                user_id=known.user_id if known else "", session_id=known.session_id if known else "",
            )  # fmt: skip
            await gateway.publish(events)
        return Response(status_code=200)

    async def _tag(request: Request, delete: bool) -> Response:
        trace_id = _trace_id(request)
        body = await json_body(request)
        key = body.get("key")
        if isinstance(key, str) and key in IMMUTABLE_TAGS:
            raise InvalidRequest(f"tag {key!r} is immutable")
        await gateway.publish([tag_event(trace_id, body, delete=delete)])
        return json_response({})

    @guard
    async def set_tag(request: Request) -> Response:
        return await _tag(request, delete=False)

    @guard
    async def delete_tag(request: Request) -> Response:
        return await _tag(request, delete=True)

    @guard
    async def create_assessment(request: Request) -> Response:
        trace_id = _trace_id(request)
        body = await json_body(request)
        event = assessment_from_request(trace_id, body)
        await gateway.publish([event])
        raw = dict(body["assessment"])
        raw["assessment_id"] = event.assessment_id
        raw["trace_id"] = trace_id
        return json_response({"assessment": raw})

    @guard
    async def otlp(request: Request) -> Response:
        media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        body = decompress(await request.body(), request.headers.get("content-encoding"))
        doc = parse_request(body, request.headers.get("content-type"))
        experiment_id = request.headers.get(EXPERIMENT_HEADER) or "0"
        batch = export_events(doc, experiment_id)
        await gateway.publish(batch.events)
        payload, content_type = export_response(batch, PROTOBUF if media == PROTOBUF else JSON)
        return Response(payload, status_code=200, media_type=content_type)

    return [
        Route("/api/3.0/mlflow/traces", start_trace, methods=["POST"]),
        Route(ARTIFACTS_PREFIX + "/{path:path}", put_artifact, methods=["PUT"]),
        Route("/api/2.0/mlflow/traces/{trace_id}/tags", set_tag, methods=["PATCH"]),
        Route("/api/2.0/mlflow/traces/{trace_id}/tags", delete_tag, methods=["DELETE"]),
        Route("/api/3.0/mlflow/traces/{trace_id}/assessments", create_assessment, methods=["POST"]),
        Route("/v1/traces", otlp, methods=["POST"]),
    ]

