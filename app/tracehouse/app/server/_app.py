"""The HTTP app: tracehouse's JSON read API and web UI, MLflow's trace REST API, and (with a gateway)
MLflow's and OTLP's write routes.

Reads run the store calls in the thread pool (chDB runs in process and blocks). Writes go to Kafka
through the :class:`~tracehouse.gateway.Gateway`; a read first waits, boundedly, until the sink stored
every write this server acknowledged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tracehouse.app.status import KafkaTarget, Status, collect
from tracehouse.gateway import Gateway
from tracehouse.processors.sessions import DEFAULT_SESSIONIZER_ID
from tracehouse.schemas import settings as s
from tracehouse.storage import Store

from ._auth import AuthConfig, AuthMiddleware
from ._http import BodyLimit, error_response, json_response
from ._mlflow_routes import mlflow_read_routes
from ._read_routes import read_routes
from ._status_route import status_route
from ._write_routes import write_routes


def create_app(
    store: Store,
    *,
    gateway: Gateway | None = None,
    auth: AuthConfig | None = None,
    manage_gateway: bool = True,
    max_body_bytes: int | None = None,
    status: Callable[[], Awaitable[Status]] | None = None,
) -> Any:
    """Build the ASGI app serving ``store``; with ``gateway`` it also accepts writes (started and
    stopped by the app's lifespan unless ``manage_gateway`` is false); with ``auth`` it requires
    the configured token. A request body over ``max_body_bytes`` (default ``TRACEHOUSE_MAX_REQUEST_BYTES``)
    is answered 413. ``status`` gathers what ``/api/tracehouse/v1/status`` shows (default: the store,
    and with a gateway its Kafka, for the default consumer groups)."""

    async def fresh() -> None:
        """Read-your-writes: wait (boundedly) for the sink to store what this server acknowledged."""
        if gateway is not None:
            await gateway.fence.wait()

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "store": "embedded" if store.embedded else "clickhouse"})

    async def index(request: Request) -> Response:
        page = resources.files("tracehouse.app.server").joinpath("_ui.html").read_text()
        return HTMLResponse(page)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "ENDPOINT_NOT_FOUND", f"no route for {request.method} {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")
        response = error_response(405, "BAD_REQUEST", f"{request.method} is not allowed on {request.url.path}"
                                  + (f" (allowed: {allowed})" if allowed else ""))  # fmt: skip
        if allowed:
            response.headers["Allow"] = allowed
        return response

    if status is None:
        kafka = None
        if gateway is not None:
            kafka = KafkaTarget(gateway.config.bootstrap, gateway.topics, gateway.config.sink_group,
                                DEFAULT_SESSIONIZER_ID)  # fmt: skip

        async def status() -> Status:
            return await collect(store, kafka)

    mlflow_routes, trace_info = mlflow_read_routes(store, fresh)
    routes = [Route("/", index), Route("/health", health), status_route(status), *read_routes(store, fresh),
              *mlflow_routes]  # fmt: skip
    if gateway is not None:
        routes += write_routes(gateway)
    routes.append(trace_info)  # last: its {trace_id:path} would swallow the more specific routes

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

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed}, lifespan=lifespan)
    limited = BodyLimit(app, s.MAX_REQUEST_BYTES.read(max_body_bytes))
    if auth is not None and auth.enabled:
        return AuthMiddleware(limited, auth)
    return limited
