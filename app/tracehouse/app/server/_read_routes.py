"""tracehouse's JSON read API: one route per registered read operation, derived from its definition.

Each handler parses the operation's parameters (query string for GET, JSON body for POST, path
parameters from the URL), waits (boundedly) until this server's acknowledged writes are stored, runs
the operation in the thread pool (chDB runs in process and blocks) and answers ``op.encode(result)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracehouse.query import ReadOperation, operations
from tracehouse.storage import Store

from ._http import guard, json_body, json_response

Fresh = Callable[[], Awaitable[None]]


def read_route(op: ReadOperation[Any], store: Store, fresh: Fresh) -> Route:
    """The route serving ``op`` over ``store``."""

    @guard
    async def handle(request: Request) -> Response:
        if op.method == "GET":
            params = op.parse_query(request.path_params, request.query_params)
        else:
            params = op.parse_body(request.path_params, await json_body(request))
        await fresh()
        result = await run_in_threadpool(op.run, store, **params)
        return json_response(op.encode(result))

    return Route(op.route, handle, methods=[op.method], name=f"read:{op.name}")


def read_routes(store: Store, fresh: Fresh) -> list[Route]:
    """Every registered read operation's route; fixed paths before parameterised ones."""
    ops = sorted(operations(), key=lambda op: ("{" in op.path, op.path))
    return [read_route(op, store, fresh) for op in ops]
