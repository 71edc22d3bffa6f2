"""HTTP plumbing shared by the read and write routes: MLflow-shaped errors and JSON bodies.

Errors are ``{"error_code", "message"}`` with a 4xx for bad input: MLflow's client retries any 5xx
(408/429/500/502/503/504) for minutes, so a 5xx means "try again", never "your request is wrong".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger("tracehouse.server")

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """An error with an MLflow error code and HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error_code": code, "message": message}, status)


def guard(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except ValueError as exc:  # typed filter / order_by / page token / gateway errors are ValueErrors
            status = getattr(exc, "status", 400)
            return error_response(status, getattr(exc, "error_code", "INVALID_PARAMETER_VALUE"), str(exc))
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
        raise ApiError(400, "MALFORMED_REQUEST", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "MALFORMED_REQUEST", "request body must be a JSON object")
    return body
