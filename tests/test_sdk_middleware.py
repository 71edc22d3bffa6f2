"""TracehouseMiddleware with FastAPI and Starlette (in-memory exporter, httpx's in-process ASGI transport).

``starlette.testclient`` is not used: with this Starlette it warns about ``httpx`` at import, and the
suite turns warnings into errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, HTTPException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import tracehouse
from tracehouse import TracehouseMiddleware
from tracehouse.producers.testing import InMemoryExporter, capture_events
from tracehouse.schemas import decode_event


@pytest.fixture
def events() -> Iterator[InMemoryExporter]:
    with capture_events() as exporter:
        yield exporter


@tracehouse.trace(span_type="LLM")
def generate(message: str) -> str:
    return message.upper()


@tracehouse.trace
async def agenerate(message: str) -> str:
    await asyncio.sleep(0)
    return message[::-1]


def fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(TracehouseMiddleware)

    @app.post("/chat/{room}")
    def chat(room: str, body: dict[str, str]) -> dict[str, str]:  # sync: runs in the thread pool
        return {"answer": generate(body["message"])}

    @app.get("/async")
    async def async_endpoint() -> dict[str, str]:
        tracehouse.update_current_trace(tags={"route": "async"})
        return {"answer": await agenerate("abc")}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("handler failed")

    @app.get("/unavailable")
    def unavailable() -> None:
        raise HTTPException(status_code=503, detail="down")

    @app.get("/missing")
    def missing() -> None:
        raise HTTPException(status_code=404, detail="nope")

    return app


def call(app: Any, method: str, url: str, *, raise_app_exceptions: bool = True, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, url, **kw)

    return asyncio.run(go())


def decoded_traces(events: InMemoryExporter) -> list[dict[str, Any]]:
    traces = events.traces()
    for trace in traces:
        decode_event(orjson.dumps(trace))
    return traces


def test_fastapi_request_becomes_a_trace_with_identity(events: InMemoryExporter) -> None:
    response = call(
        fastapi_app(),
        "POST",
        "/chat/r1?lang=en",
        json={"message": "hi"},
        headers={"X-User-ID": "user-1", "X-Session-ID": "session-1", "X-Request-ID": "req-1"},
    )
    assert response.json() == {"answer": "HI"}
    (trace,) = decoded_traces(events)
    assert trace["metadata"]["mlflow.trace.user"] == "user-1"
    assert trace["metadata"]["mlflow.trace.session"] == "session-1"
    assert trace["client_request_id"] == "req-1"
    assert trace["state"] == "OK"
    root, child = trace["spans"]
    assert root["name"] == "POST /chat/r1"
    assert root["span_type"] == "CHAIN"
    assert root["attributes"]["http.response.status_code"] == 200
    assert root["attributes"]["http.request.method"] == "POST"
    assert root["attributes"]["http.route"] == "/chat/{room}"
    assert root["attributes"]["mlflow.spanInputs"] == {
        "method": "POST",
        "path": "/chat/r1",
        "query": "lang=en",
    }
    assert child["name"] == "generate"
    assert child["parent_span_id"] == root["span_id"]
    assert trace["tags"]["mlflow.traceName"] == "POST /chat/r1"


def test_missing_headers_are_simply_absent(events: InMemoryExporter) -> None:
    assert call(fastapi_app(), "GET", "/async").json() == {"answer": "cba"}
    (trace,) = decoded_traces(events)
    assert "mlflow.trace.user" not in trace["metadata"]
    assert "mlflow.trace.session" not in trace["metadata"]
    assert "client_request_id" not in trace
    assert trace["tags"]["route"] == "async"
    root, child = trace["spans"]
    assert child["parent_span_id"] == root["span_id"]


def test_errors_and_5xx_make_error_traces(events: InMemoryExporter) -> None:
    app = fastapi_app()
    assert call(app, "GET", "/boom", raise_app_exceptions=False).status_code == 500
    assert call(app, "GET", "/unavailable").status_code == 503
    assert call(app, "GET", "/missing").status_code == 404
    boom, unavailable, missing = decoded_traces(events)
    assert boom["state"] == "ERROR"
    (event,) = boom["spans"][0]["events"]
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert unavailable["state"] == "ERROR"
    assert unavailable["spans"][0]["status_message"] == "HTTP 503"
    assert missing["state"] == "OK"
    assert missing["spans"][0]["attributes"]["http.response.status_code"] == 404


def test_the_app_exception_propagates_unchanged(events: InMemoryExporter) -> None:
    with pytest.raises(RuntimeError, match="handler failed"):
        call(fastapi_app(), "GET", "/boom")
    (trace,) = decoded_traces(events)
    assert trace["state"] == "ERROR"


def test_starlette_streaming_and_httpx_asgi_transport(events: InMemoryExporter) -> None:
    @tracehouse.trace
    def tokens() -> Iterator[str]:
        yield from ["a", "b", "c"]

    async def stream(request: Request) -> Response:
        return StreamingResponse(tokens(), media_type="text/plain")

    async def hello(request: Request) -> Response:
        return PlainTextResponse(f"hello {request.headers.get('x-user-id')}")

    async def json_endpoint(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/stream", stream), Route("/hello", hello), Route("/json", json_endpoint)])
    app.add_middleware(TracehouseMiddleware, span_type="HTTP", user_header="X-User-ID")

    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            texts = [(await client.get("/stream")).text]
            texts.append((await client.get("/hello", headers={"x-user-id": "u-7"})).text)
            texts.append((await client.get("/json", headers={"X-Session-ID": "s-7"})).text)
            return texts

    assert asyncio.run(main()) == ["abc", "hello u-7", '{"ok":true}']
    streamed, hello_trace, json_trace = decoded_traces(events)
    root, child = streamed["spans"]
    assert root["span_type"] == "HTTP"
    assert child["name"] == "tokens"
    assert child["parent_span_id"] == root["span_id"]
    assert child["attributes"]["mlflow.spanOutputs"] == ["a", "b", "c"]
    assert hello_trace["metadata"]["mlflow.trace.user"] == "u-7"
    assert json_trace["metadata"]["mlflow.trace.session"] == "s-7"


def test_non_http_scopes_pass_through(events: InMemoryExporter) -> None:
    seen: list[str] = []

    async def inner(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> MutableMapping[str, Any]:
        return {}

    async def drop(message: MutableMapping[str, Any]) -> None:
        return None

    middleware = TracehouseMiddleware(inner)
    asyncio.run(middleware({"type": "lifespan"}, nothing, drop))
    asyncio.run(middleware({"type": "websocket", "path": "/ws", "headers": []}, nothing, drop))
    assert seen == ["lifespan", "websocket"]
    assert events.events == []


def test_disabled_mode_passes_through() -> None:
    exporter = InMemoryExporter()
    tracehouse.configure(enabled=False, exporter=exporter)
    try:
        assert call(fastapi_app(), "POST", "/chat/x", json={"message": "m"}).json() == {"answer": "M"}
        assert exporter.events == []
    finally:
        tracehouse.shutdown()
