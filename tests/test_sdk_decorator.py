"""@tracehouse.trace on sync, async, generator and async-generator functions (in-memory exporter)."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

import orjson
import pytest

import tracehouse
from tracehouse.producers.testing import InMemoryExporter, capture_events
from tracehouse.schemas import TraceEvent, decode_event


@pytest.fixture
def events() -> Iterator[InMemoryExporter]:
    with capture_events() as exporter:
        yield exporter


def only_trace(events: InMemoryExporter) -> dict[str, Any]:
    traces = events.traces()
    assert len(traces) == 1, traces
    decoded = decode_event(orjson.dumps(traces[0]))
    assert isinstance(decoded, TraceEvent)
    return traces[0]


def spans_by_name(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in trace["spans"]}


@tracehouse.trace
def generate_response(message: str) -> str:
    with tracehouse.start_span("retrieve", span_type="RETRIEVER") as span:
        span.set_inputs({"query": message})
        span.set_outputs(["doc-1", "doc-7"])
    return f"answer to {message}"


@tracehouse.trace
def chat_completion(user_id: str, session_id: str, message: str) -> str:
    tracehouse.update_current_trace(
        metadata={"mlflow.trace.user": user_id, "mlflow.trace.session": session_id},
        client_request_id="req-abc-123",
        tags={"env": "prod"},
    )
    return generate_response(message)


def test_readme_example_produces_a_valid_mlflow_style_trace(events: InMemoryExporter) -> None:
    assert chat_completion("user-123", "session-abc", "What is the refund policy?") == (
        "answer to What is the refund policy?"
    )
    trace = only_trace(events)
    assert trace["type"] == "trace"
    assert trace["trace_id"].startswith("tr-")
    assert len(trace["trace_id"]) == 35
    assert trace["experiment_id"] == "0"
    assert trace["client_request_id"] == "req-abc-123"
    assert trace["state"] == "OK"
    meta = trace["metadata"]
    assert meta["mlflow.trace.user"] == "user-123"
    assert meta["mlflow.trace.session"] == "session-abc"
    assert meta["mlflow.trace_schema.version"] == "3"
    expected_inputs = (
        '{"user_id": "user-123", "session_id": "session-abc", "message": "What is the refund policy?"}'
    )
    assert meta["mlflow.traceInputs"] == expected_inputs
    assert meta["mlflow.traceOutputs"] == '"answer to What is the refund policy?"'
    assert trace["request_preview"] == expected_inputs
    assert trace["response_preview"] == '"answer to What is the refund policy?"'
    assert trace["tags"] == {"env": "prod", "mlflow.traceName": "chat_completion"}

    spans = spans_by_name(trace)
    root, child, grandchild = spans["chat_completion"], spans["generate_response"], spans["retrieve"]
    assert [s["name"] for s in trace["spans"]] == ["chat_completion", "generate_response", "retrieve"]
    assert "parent_span_id" not in root
    assert child["parent_span_id"] == root["span_id"]
    assert grandchild["parent_span_id"] == child["span_id"]
    assert root["attributes"]["mlflow.spanFunctionName"] == "chat_completion"
    assert root["attributes"]["mlflow.spanType"] == "UNKNOWN"
    assert root["attributes"]["mlflow.spanInputs"] == {
        "user_id": "user-123",
        "session_id": "session-abc",
        "message": "What is the refund policy?",
    }
    assert grandchild["span_type"] == "RETRIEVER"
    assert grandchild["attributes"]["mlflow.spanOutputs"] == ["doc-1", "doc-7"]
    assert all(s["status"] == "OK" for s in trace["spans"])
    assert root["start_time_ns"] <= child["start_time_ns"] <= grandchild["start_time_ns"]
    assert grandchild["end_time_ns"] <= child["end_time_ns"] <= root["end_time_ns"]
    assert trace["timestamp_ms"] == root["start_time_ns"] // 1_000_000
    assert tracehouse.get_last_active_trace_id() == trace["trace_id"]


def test_decorator_options_and_defaults(events: InMemoryExporter) -> None:
    @tracehouse.trace(name="custom", span_type=tracehouse.SpanType.TOOL, attributes={"model": "m1", "k": 3})
    def tool(a: int, b: int = 2, *rest: int, flag: bool = False, **extra: Any) -> int:
        return a + b + sum(rest)

    assert tool(1, 5, 7, flag=True, x="y") == 13
    assert tool(1) == 3
    first, second = events.traces()
    root = first["spans"][0]
    assert root["name"] == "custom"
    assert root["span_type"] == "TOOL"
    assert root["attributes"]["model"] == "m1"
    assert root["attributes"]["k"] == 3
    assert root["attributes"]["mlflow.spanFunctionName"] == "tool"
    assert root["attributes"]["mlflow.spanInputs"] == {
        "a": 1,
        "b": 5,
        "rest": [7],
        "flag": True,
        "extra": {"x": "y"},
    }
    assert second["spans"][0]["attributes"]["mlflow.spanInputs"] == {
        "a": 1,
        "b": 2,
        "rest": [],
        "flag": False,
        "extra": {},
    }
    assert first["tags"]["mlflow.traceName"] == "custom"


def test_self_and_cls_are_not_recorded(events: InMemoryExporter) -> None:
    class Agent:
        @tracehouse.trace
        def answer(self, question: str) -> str:
            return question.upper()

        @classmethod
        @tracehouse.trace
        def build(cls, name: str) -> str:
            return name

    assert Agent().answer("hi") == "HI"
    assert Agent.build("x") == "x"
    inputs = [t["spans"][0]["attributes"]["mlflow.spanInputs"] for t in events.traces()]
    assert inputs == [{"question": "hi"}, {"name": "x"}]


def test_wraps_keeps_the_function_identity() -> None:
    def plain(x: int) -> int:
        """Doc."""
        return x

    async def coro(x: int) -> int:
        return x

    def gen(x: int) -> Iterator[int]:
        yield x

    async def agen(x: int) -> AsyncIterator[int]:
        yield x

    wrapped = tracehouse.trace(plain)
    assert wrapped.__name__ == "plain"
    assert wrapped.__doc__ == "Doc."
    assert wrapped.__wrapped__ is plain  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(plain)
    assert inspect.iscoroutinefunction(tracehouse.trace(coro))
    assert inspect.isgeneratorfunction(tracehouse.trace(gen))
    assert inspect.isasyncgenfunction(tracehouse.trace(agen))


class Boom(RuntimeError):
    pass


def test_exception_is_recorded_and_reraised_unchanged(events: InMemoryExporter) -> None:
    error = Boom("simulated LLM failure")

    @tracehouse.trace
    def inner() -> None:
        raise error

    @tracehouse.trace
    def outer() -> None:
        inner()

    with pytest.raises(Boom) as caught:
        outer()
    assert caught.value is error
    trace = only_trace(events)
    assert trace["state"] == "ERROR"
    assert trace["metadata"]["mlflow.traceOutputs"] == ""
    assert trace["response_preview"] == ""
    for span in trace["spans"]:
        assert span["status"] == "ERROR"
        assert span["status_message"] == "Boom: simulated LLM failure"
        (event,) = span["events"]
        assert event["name"] == "exception"
        assert event["attributes"]["exception.type"] == "Boom"
        assert event["attributes"]["exception.message"] == "simulated LLM failure"
        assert "Traceback (most recent call last)" in event["attributes"]["exception.stacktrace"]
        assert "mlflow.spanOutputs" not in span["attributes"]


def test_caught_child_error_leaves_the_trace_ok(events: InMemoryExporter) -> None:
    @tracehouse.trace
    def flaky() -> None:
        raise ValueError("once")

    @tracehouse.trace
    def handler() -> str:
        try:
            flaky()
        except ValueError:
            return "recovered"
        return "no"

    assert handler() == "recovered"
    trace = only_trace(events)
    spans = spans_by_name(trace)
    assert trace["state"] == "OK"
    assert spans["flaky"]["status"] == "ERROR"
    assert spans["handler"]["status"] == "OK"


def test_async_functions_and_concurrent_children(events: InMemoryExporter) -> None:
    @tracehouse.trace(span_type="LLM")
    async def llm(prompt: str) -> str:
        await asyncio.sleep(0)
        return prompt[::-1]

    @tracehouse.trace
    async def agent(question: str) -> list[str]:
        tracehouse.update_current_trace(metadata={"mlflow.trace.session": "s-async"})
        return list(await asyncio.gather(llm(question), llm(question + "!")))

    async def main() -> list[list[str]]:
        return list(await asyncio.gather(agent("a"), agent("b")))

    assert asyncio.run(main()) == [["a", "!a"], ["b", "!b"]]
    traces = events.traces()
    assert len(traces) == 2
    for trace in traces:
        decode_event(orjson.dumps(trace))
        root, *children = trace["spans"]
        assert root["name"] == "agent"
        assert len(children) == 2
        assert {c["parent_span_id"] for c in children} == {root["span_id"]}
        assert trace["metadata"]["mlflow.trace.session"] == "s-async"
    assert traces[0]["trace_id"] != traces[1]["trace_id"]


def test_async_exception(events: InMemoryExporter) -> None:
    @tracehouse.trace
    async def fails() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        asyncio.run(fails())
    trace = only_trace(events)
    assert trace["state"] == "ERROR"
    assert trace["spans"][0]["events"][0]["attributes"]["exception.type"] == "KeyError"


def test_generator_span_covers_the_iteration_and_not_the_consumer(events: InMemoryExporter) -> None:
    @tracehouse.trace
    def inner_work(i: int) -> int:
        return i

    @tracehouse.trace(span_type="LLM")
    def stream(n: int) -> Iterator[str]:
        for i in range(n):
            inner_work(i)
            yield f"tok{i}"

    @tracehouse.trace
    def consumer_step(token: str) -> str:
        return token

    @tracehouse.trace
    def handler() -> list[str]:
        out = []
        for token in stream(3):
            assert tracehouse.get_current_active_span() is not None
            assert tracehouse.get_current_active_span().name == "handler"  # type: ignore[union-attr]
            out.append(consumer_step(token))
        return out

    assert handler() == ["tok0", "tok1", "tok2"]
    trace = only_trace(events)
    spans = trace["spans"]
    by_id = {s["span_id"]: s for s in spans}
    stream_span = next(s for s in spans if s["name"] == "stream")
    assert stream_span["attributes"]["mlflow.spanOutputs"] == ["tok0", "tok1", "tok2"]
    assert stream_span["attributes"]["mlflow.spanInputs"] == {"n": 3}
    for span in spans:
        if span["name"] == "inner_work":
            assert span["parent_span_id"] == stream_span["span_id"]
        if span["name"] == "consumer_step":
            assert by_id[span["parent_span_id"]]["name"] == "handler"
            # the consumer ran while the generator was suspended, inside the generator's lifetime
            assert span["start_time_ns"] >= stream_span["start_time_ns"]
    last_inner = max(s["end_time_ns"] for s in spans if s["name"] == "inner_work")
    assert stream_span["end_time_ns"] >= last_inner


def test_generator_early_close_error_send_and_return(events: InMemoryExporter) -> None:
    @tracehouse.trace
    def counter() -> Generator[int, None, None]:
        yield from range(100)

    gen = counter()
    assert next(gen) == 0
    assert next(gen) == 1
    gen.close()

    @tracehouse.trace
    def broken() -> Iterator[int]:
        yield 1
        raise ValueError("mid-stream")

    with pytest.raises(ValueError, match="mid-stream"):
        list(broken())

    @tracehouse.trace
    def echo() -> Any:
        received = []
        value = yield "ready"
        while value is not None:
            received.append(value)
            value = yield value * 2
        return received

    g = echo()
    assert next(g) == "ready"
    assert g.send(2) == 4
    with pytest.raises(StopIteration) as stop:
        g.send(None)
    assert stop.value.value == [2]

    closed, failed, echoed = events.traces()
    assert closed["state"] == "OK"
    assert closed["spans"][0]["attributes"]["mlflow.spanOutputs"] == [0, 1]
    assert failed["state"] == "ERROR"
    assert failed["spans"][0]["attributes"].get("mlflow.spanOutputs") is None
    assert echoed["spans"][0]["attributes"]["mlflow.spanOutputs"] == ["ready", 4]


def test_generator_outputs_are_capped_and_reducible() -> None:
    with capture_events(max_payload_items=10) as events:

        @tracehouse.trace
        def many() -> Iterator[int]:
            yield from range(25)

        @tracehouse.trace(output_reducer=lambda chunks: "".join(chunks))
        def chunks() -> Iterator[str]:
            yield from ["Hel", "lo"]

        assert sum(many()) == 300
        assert list(chunks()) == ["Hel", "lo"]
    capped, reduced = (t["spans"][0]["attributes"]["mlflow.spanOutputs"] for t in events.traces())
    assert capped == [*range(10), "... 15 more item(s)"]
    assert reduced == "Hello"


def test_async_generator(events: InMemoryExporter) -> None:
    @tracehouse.trace
    async def child(i: int) -> int:
        return i

    @tracehouse.trace(span_type="LLM")
    async def stream(n: int) -> AsyncGenerator[int, None]:
        for i in range(n):
            yield await child(i)

    @tracehouse.trace
    async def failing() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("stream broke")

    async def main() -> list[int]:
        got = [i async for i in stream(3)]
        agen = stream(10)
        assert await agen.__anext__() == 0
        await agen.aclose()
        with pytest.raises(RuntimeError):
            async for _ in failing():
                pass
        return got

    assert asyncio.run(main()) == [0, 1, 2]
    full, closed, failed = events.traces()
    root = full["spans"][0]
    assert root["attributes"]["mlflow.spanOutputs"] == [0, 1, 2]
    assert [s["parent_span_id"] for s in full["spans"][1:]] == [root["span_id"]] * 3
    assert closed["state"] == "OK"
    assert closed["spans"][0]["attributes"]["mlflow.spanOutputs"] == [0]
    assert failed["state"] == "ERROR"


def test_values_are_json_safe_and_capped() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    with capture_events(max_payload_chars=50) as events:

        @tracehouse.trace
        def f(text: str, obj: Any, raw: bytes, nested: Any) -> Any:
            return {1: obj, "s": {1, 2}}

        f("x" * 200, Opaque(), b"\xffabc", {"a": [1, 2.5, None, True, 2**80]})
    (trace,) = events.traces()
    decode_event(orjson.dumps(trace))
    root = trace["spans"][0]
    inputs = root["attributes"]["mlflow.spanInputs"]
    assert inputs["text"] == "x" * 47 + "..."
    assert inputs["obj"] == "<Opaque>"
    assert inputs["raw"] == "\ufffdabc"
    assert inputs["nested"] == {"a": [1, 2.5, None, True, str(2**80)]}
    assert root["attributes"]["mlflow.spanOutputs"] == {"1": "<Opaque>", "s": [1, 2]}
    assert len(trace["metadata"]["mlflow.traceInputs"]) <= 250


def test_recorded_values_are_snapshots(events: InMemoryExporter) -> None:
    @tracehouse.trace
    def mutate(items: list[int]) -> list[int]:
        return items

    data = [1, 2]
    mutate(data)
    data.append(3)
    assert only_trace(events)["spans"][0]["attributes"]["mlflow.spanInputs"] == {"items": [1, 2]}


def test_disabled_mode_runs_code_and_publishes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    exporter = InMemoryExporter()
    tracehouse.configure(enabled=False, exporter=exporter)
    try:

        @tracehouse.trace
        def f(x: int) -> int:
            tracehouse.update_current_trace(metadata={"a": "b"})
            assert tracehouse.get_current_active_span() is None
            with tracehouse.start_span("inner") as span:
                span.set_inputs({"x": x})
                assert isinstance(span, tracehouse.NoOpSpan)
            return x + 1

        @tracehouse.trace
        async def g(x: int) -> int:
            return x * 2

        @tracehouse.trace
        def gen() -> Iterator[int]:
            yield 1

        @tracehouse.trace
        async def agen() -> AsyncIterator[int]:
            yield 2

        async def collect() -> list[int]:
            return [i async for i in agen()]

        assert f(1) == 2
        assert asyncio.run(g(2)) == 4
        assert list(gen()) == [1]
        assert asyncio.run(collect()) == [2]
        with pytest.raises(ZeroDivisionError):
            tracehouse.trace(lambda: 1 / 0)()
        assert exporter.events == []
        assert tracehouse.stats() == tracehouse.PublisherStats()
        assert "outside of a trace" not in caplog.text
    finally:
        tracehouse.shutdown()


def test_a_failing_exporter_never_reaches_the_app(caplog: pytest.LogCaptureFixture) -> None:
    def explode(event: dict[str, Any]) -> None:
        raise OSError("disk full")

    tracehouse.configure(exporter=explode)
    try:
        assert chat_completion("u", "s", "m") == "answer to m"
        stats = tracehouse.stats()
        assert (stats.accepted, stats.published, stats.failed) == (1, 0, 1)
        assert "exporter raised" in caplog.text
    finally:
        tracehouse.shutdown()


def test_internal_failures_are_swallowed(events: InMemoryExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracehouse.producers._decorator as decorator

    def broken_open_span(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sdk bug")

    monkeypatch.setattr(decorator, "open_span", broken_open_span)

    @tracehouse.trace
    def f(x: int) -> int:
        return x * 3

    assert f(3) == 9
    assert events.events == []


def test_partial_and_callable_objects_can_be_traced(events: InMemoryExporter) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    traced = tracehouse.trace(functools.partial(add, 1))
    assert traced(2) == 3
    root = only_trace(events)["spans"][0]
    assert root["name"] == "partial"
    assert root["attributes"]["mlflow.spanInputs"] == {"b": 2}
