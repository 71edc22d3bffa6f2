"""HTTP plumbing shared by the read and write routes: MLflow-shaped errors and JSON bodies.

Errors are ``{"error_code", "message"}``. Every :class:`~tracehouse.schemas.errors.TracehouseError`
carries its code and status; bad input is always a 4xx: MLflow's client retries any 5xx
(408/429/500/502/503/504) for minutes, so a 5xx means "try again", never "your request is wrong".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tracehouse.schemas.errors import INVALID_PARAMETER_VALUE, InvalidRequest, TracehouseError

log = logging.getLogger("tracehouse.server")

Handler = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error_code": code, "message": message}, status)


def guard(handler: Handler) -> Handler:
    """Answer a handler's errors in MLflow's shape: a :class:`TracehouseError` with its own status and
    code, any other ``ValueError`` as a 400, anything else as a logged 500."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except TracehouseError as exc:
            response = error_response(exc.http_status, exc.error_code, str(exc))
            retry_after = getattr(exc, "retry_after_s", None)
            if retry_after is not None:
                response.headers["Retry-After"] = str(max(1, round(retry_after)))
            return response
        except ValueError as exc:
            return error_response(400, INVALID_PARAMETER_VALUE, str(exc))
        except Exception as exc:  # keep the MLflow error shape even for our own failures
            log.exception("request %s %s failed", request.method, request.url.path)
            return error_response(500, "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}")

    return wrapped


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", "MALFORMED_REQUEST") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", "MALFORMED_REQUEST")
    return body
