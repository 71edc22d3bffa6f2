"""``GET /api/tracehouse/v1/status``: the same :class:`~tracehouse.app.status.Status` as ``tracehouse
status`` and the web UI's health badge. Always 200 when the status could be gathered: health is in the
body (``healthy``, ``level``, ``checks``); ``/health`` stays the liveness probe."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracehouse.app.status import Status

from ._http import guard, json_response

STATUS_PATH = "/api/tracehouse/v1/status"


def status_route(status: Callable[[], Awaitable[Status]]) -> Route:
    async def handle(request: Request) -> Response:
        return json_response((await status()).to_dict())

    return Route(STATUS_PATH, guard(handle), methods=["GET"], name="status")
