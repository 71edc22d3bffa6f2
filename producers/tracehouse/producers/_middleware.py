"""``TracehouseMiddleware``: a pure ASGI middleware that makes every HTTP request a trace.

Works with any ASGI framework (FastAPI, Starlette, ...) without importing one::

    app.add_middleware(TracehouseMiddleware)

The root span is named ``"{METHOD} {path}"``; functions decorated with ``@tracehouse.trace`` that the
endpoint calls become its child spans. The ``X-User-ID``, ``X-Session-ID`` and ``X-Request-ID`` headers
become ``mlflow.trace.user``, ``mlflow.trace.session`` and the ``client_request_id`` (a missing header
is simply absent). The trace is ERROR when the app raises or answers 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tracehouse.schemas import TRACE_SESSION, TRACE_USER

from ._api import start_span
from ._record import LiveSpan, SpanType
from ._runtime import RUNTIME

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("tracehouse")


class TracehouseMiddleware:
    """Trace each HTTP request (pure ASGI; ``lifespan`` and ``websocket`` pass through untouched).

    Options: ``span_type`` of the root span (default ``CHAIN``) and the names of the three identity
    headers (case-insensitive).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        span_type: str = SpanType.CHAIN,
        user_header: str = "x-user-id",
        session_header: str = "x-session-id",
        request_id_header: str = "x-request-id",
    ) -> None:
        self.app = app
        self.span_type = span_type
        self._user = user_header.lower().encode("latin-1")
        self._session = session_header.lower().encode("latin-1")
        self._request_id = request_id_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or RUNTIME.enabled is False:
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET"))
        path = str(scope.get("path", "/"))
        status: list[int] = []

        async def send_and_watch(message: Message) -> None:
            if message.get("type") == "http.response.start" and not status:
                status.append(int(message.get("status", 0)))
            await send(message)

        with start_span(f"{method} {path}", span_type=self.span_type) as span:
            self._start(span, scope, method, path)
            try:
                await self.app(scope, receive, send_and_watch)
            finally:
                self._finish(span, scope, status[0] if status else None)

    def _start(self, span: LiveSpan, scope: Scope, method: str, path: str) -> None:
        if not span.is_recording:
            return
        try:
            state = span._trace
            for raw_name, raw_value in scope.get("headers") or ():
                name = bytes(raw_name).lower()
                if name == self._user:
                    state.metadata[TRACE_USER] = bytes(raw_value).decode("latin-1")
                elif name == self._session:
                    state.metadata[TRACE_SESSION] = bytes(raw_value).decode("latin-1")
                elif name == self._request_id:
                    state.client_request_id = bytes(raw_value).decode("latin-1")
            inputs: dict[str, Any] = {"method": method, "path": path}
            query = scope.get("query_string") or b""
            if query:
                inputs["query"] = bytes(query).decode("latin-1")
            span.set_inputs(inputs)
            span.set_attribute("http.request.method", method)
            span.set_attribute("url.path", path)
        except Exception:
            _log.warning("tracehouse: could not record the HTTP request", exc_info=True)

    def _finish(self, span: LiveSpan, scope: Scope, status: int | None) -> None:
        if not span.is_recording:
            return
        try:
            route = getattr(scope.get("route"), "path", None)
            if isinstance(route, str):
                span.set_attribute("http.route", route)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                span.set_outputs({"status_code": status})
                if status >= 500:
                    span.set_status("ERROR", f"HTTP {status}")
        except Exception:
            _log.warning("tracehouse: could not record the HTTP response", exc_info=True)
