"""HTTP plumbing shared by the read and write routes: MLflow-shaped errors, JSON bodies, a body limit.

Errors are ``{"error_code", "message"}``. Every :class:`~tracehouse.schemas.errors.TracehouseError`
carries its code and status; bad input is always a 4xx: MLflow's client retries any 5xx
(408/429/500/502/503/504) for minutes, so a 5xx means "try again", never "your request is wrong".

* A body larger than the server's limit (``TRACEHOUSE_MAX_REQUEST_BYTES``) is a 413, refused from its
  ``Content-Length`` before it is read, or as soon as a chunked body passes the limit (:class:`BodyLimit`).
* A JSON route given a body of another media type is a 415 (MLflow answers 400 for it, with the same
  ``INVALID_PARAMETER_VALUE``; 415 is HTTP's status for it, and a 4xx either way).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tracehouse.schemas.errors import INVALID_PARAMETER_VALUE, InvalidRequest, TracehouseError

#: What a JSON route accepts (MLflow's client sends ``application/json``).
JSON_MEDIA_TYPE: Final = "application/json"

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


def media_type(request: Request) -> str | None:
    """The request's media type without parameters, lower case (``None`` without a Content-Type)."""
    header = request.headers.get("content-type")
    return header.split(";")[0].strip().lower() if header is not None else None


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body). A body declared as another media type is a
    415; one without a Content-Type is read as JSON."""
    raw = await request.body()
    if not raw:
        return {}
    media = media_type(request)
    if media is not None and media != JSON_MEDIA_TYPE and not media.endswith("+json"):
        raise InvalidRequest(
            f"Content-Type must be {JSON_MEDIA_TYPE}, not {request.headers.get('content-type')!r}", status=415
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", "MALFORMED_REQUEST") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", "MALFORMED_REQUEST")
    return body


class BodyLimit:
    """Pure ASGI middleware: a request body over ``max_bytes`` is answered 413 with an MLflow error body.

    A ``Content-Length`` over the limit is refused before the body is read. A body without one (chunked)
    is counted as it is received: past the limit, the handler's read raises a 413
    :class:`InvalidRequest`, which the handler's :func:`guard` answers (or this middleware, if the
    response has not started).
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _error(self, size: str) -> InvalidRequest:
        return InvalidRequest(f"request body too large: {size}, over the limit of {self.max_bytes} bytes "
                              f"(TRACEHOUSE_MAX_REQUEST_BYTES)", status=413)  # fmt: skip

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_error(send, self._error(f"Content-Length {int(length)}"))
            return
        received = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error(f"{received} bytes received so far")
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except InvalidRequest as exc:
            if started or exc.http_status != 413:
                raise
            await _send_error(send, exc)


async def _send_error(send: Any, exc: TracehouseError) -> None:
    body = orjson.dumps(exc.to_dict())
    await send({"type": "http.response.start", "status": exc.http_status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
