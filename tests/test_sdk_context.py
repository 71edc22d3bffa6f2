"""Spans, the active-span context (threads, asyncio tasks) and update_current_trace."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

import tracehouse
from tracehouse.producers.testing import InMemoryExporter, capture_events
from tracehouse.schemas import decode_event


@pytest.fixture
def events() -> Iterator[InMemoryExporter]:
    with capture_events() as exporter:
        yield exporter


def test_start_span_outside_a_trace_starts_one(events: InMemoryExporter) -> None:
    assert tracehouse.get_current_active_span() is None
    with tracehouse.start_span("root", span_type="CHAIN", attributes={"a": 1}) as root:
        assert tracehouse.get_current_active_span() is root
        assert root.parent_id is None
        with tracehouse.start_span("child", inputs={"q": 1}) as child:
            assert child.parent_id == root.span_id
            assert child.trace_id == root.trace_id
            assert tracehouse.get_current_active_span() is child
        assert tracehouse.get_current_active_span() is root
        assert events.events == []  # nothing leaves before the root ends
    assert tracehouse.get_current_active_span() is None
    (trace,) = events.traces()
    decode_event(orjson.dumps(trace))
    assert trace["trace_id"] == root.trace_id
    root_span, child_span = trace["spans"]
    assert root_span["span_type"] == "CHAIN"
    assert root_span["attributes"]["a"] == 1
    assert child_span["attributes"]["mlflow.spanInputs"] == {"q": 1}
    assert trace["tags"]["mlflow.traceName"] == "root"
    assert trace["metadata"]["mlflow.traceInputs"] == ""  # the root recorded no inputs


def test_span_api(events: InMemoryExporter) -> None:
    with tracehouse.start_span("s") as span:
        span.set_inputs({"x": 1})
        span.set_outputs("out")
        span.set_attribute("k", [1, 2])
        span.set_attributes({"m": {"n": 1}, "o": None})
        span.add_event("retry", {"attempt": 2}, timestamp_ns=123)
        span.record_exception(ValueError("handled"))
        span.set_status("OK")
        assert span.inputs == {"x": 1}
        assert span.outputs == "out"
        assert span.get_attribute("k") == [1, 2]
        assert span.is_recording
        assert span.status == "OK"
        assert repr(span).startswith("LiveSpan(name='s'")
    assert not span.is_recording
    span.set_attribute("late", 1)  # ignored after end
    span.set_status("ERROR")
    (trace,) = events.traces()
    decode_event(orjson.dumps(trace))
    (record,) = trace["spans"]
    assert "late" not in record["attributes"]
    assert record["status"] == "OK"
    names = [e["name"] for e in record["events"]]
    assert names == ["retry", "exception"]
    assert record["events"][0] == {"name": "retry", "timestamp_ns": 123, "attributes": {"attempt": 2}}


def test_set_status_error_without_exception_and_bad_status(
    events: InMemoryExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with tracehouse.start_span("s") as span:
        span.set_status("bogus")
        span.set_status("error", "judge said no")
    (trace,) = events.traces()
    assert trace["state"] == "ERROR"
    assert trace["spans"][0]["status_message"] == "judge said no"
    assert "unknown span status" in caplog.text


def test_exception_in_start_span_block(events: InMemoryExporter) -> None:
    with pytest.raises(LookupError), tracehouse.start_span("s"):
        raise LookupError("nope")
    (trace,) = events.traces()
    assert trace["state"] == "ERROR"
    assert trace["spans"][0]["events"][0]["attributes"]["exception.type"] == "LookupError"


def test_async_with_start_span(events: InMemoryExporter) -> None:
    async def main() -> None:
        async with tracehouse.start_span("outer") as outer:
            await asyncio.sleep(0)
            async with tracehouse.start_span("inner") as inner:
                assert inner.parent_id == outer.span_id

    asyncio.run(main())
    assert len(events.traces()) == 1


def test_open_children_are_closed_when_the_root_ends(events: InMemoryExporter) -> None:
    with tracehouse.start_span("root"):
        scope = tracehouse.start_span("left-open")
        scope.__enter__()
    (trace,) = events.traces()
    decode_event(orjson.dumps(trace))
    root, child = trace["spans"]
    assert child["status"] == "UNSET"
    assert child["end_time_ns"] == root["end_time_ns"]
    # the dangling scope is inactive now; a new span starts a new trace
    with tracehouse.start_span("after") as after:
        assert after.parent_id is None


def test_threads_start_fresh(events: InMemoryExporter) -> None:
    seen: list[Any] = []

    def worker() -> None:
        seen.append(tracehouse.get_current_active_span())
        with tracehouse.start_span("in-thread") as span:
            seen.append(span.parent_id)

    with tracehouse.start_span("main"):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == [None, None]
    traces = events.traces()
    assert {t["spans"][0]["name"] for t in traces} == {"in-thread", "main"}
    assert len({t["trace_id"] for t in traces}) == 2


def test_asyncio_tasks_inherit_the_active_span(events: InMemoryExporter) -> None:
    async def child(name: str) -> str | None:
        with tracehouse.start_span(name) as span:
            await asyncio.sleep(0)
            return span.parent_id

    async def main() -> tuple[str, list[str | None]]:
        with tracehouse.start_span("parent") as parent:
            tasks = [asyncio.create_task(child(f"c{i}")) for i in range(3)]
            return parent.span_id, list(await asyncio.gather(*tasks))

    parent_id, parents = asyncio.run(main())
    assert parents == [parent_id] * 3
    (trace,) = events.traces()
    assert len(trace["spans"]) == 4


def test_last_active_trace_id_global_and_per_context(events: InMemoryExporter) -> None:
    with tracehouse.start_span("a") as a:
        pass
    assert tracehouse.get_last_active_trace_id() == a.trace_id
    assert tracehouse.get_last_active_trace_id(thread_local=True) == a.trace_id

    from_thread: list[str | None] = []

    def other() -> None:
        from_thread.append(tracehouse.get_last_active_trace_id(thread_local=True))
        with tracehouse.start_span("b"):
            pass

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert from_thread == [None]
    b_id = events.traces()[-1]["trace_id"]
    assert tracehouse.get_last_active_trace_id() == b_id  # process-wide: the newest
    assert tracehouse.get_last_active_trace_id(thread_local=True) == a.trace_id  # this thread's


def test_update_current_trace_merges(events: InMemoryExporter) -> None:
    @tracehouse.trace
    def inner() -> None:
        tracehouse.update_current_trace(
            metadata={"tenant": "acme", "attempt": 2},
            tags={"stage": "inner"},
            request_preview="custom request",
        )

    @tracehouse.trace
    def outer() -> str:
        tracehouse.update_current_trace(
            user="u-1", session_id="s-1", tags={"stage": "outer", "env": "dev"}, client_request_id="r-1"
        )
        inner()
        tracehouse.update_current_trace(response_preview="custom response", client_request_id="r-2")
        return "x"

    outer()
    (trace,) = events.traces()
    assert trace["metadata"]["mlflow.trace.user"] == "u-1"
    assert trace["metadata"]["mlflow.trace.session"] == "s-1"
    assert trace["metadata"]["tenant"] == "acme"
    assert trace["metadata"]["attempt"] == "2"
    assert trace["tags"] == {"stage": "inner", "env": "dev", "mlflow.traceName": "outer"}
    assert trace["client_request_id"] == "r-2"
    assert trace["request_preview"] == "custom request"
    assert trace["response_preview"] == "custom response"
    assert trace["metadata"]["mlflow.traceOutputs"] == '"x"'


def test_update_current_trace_outside_a_trace_only_logs(caplog: pytest.LogCaptureFixture) -> None:
    with capture_events() as events, caplog.at_level(logging.WARNING, logger="tracehouse"):
        tracehouse.update_current_trace(metadata={"a": "b"})
    assert events.events == []
    assert "outside of a trace" in caplog.text


def test_update_current_trace_ignores_reserved_tags(
    events: InMemoryExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with tracehouse.start_span("s"):
        tracehouse.update_current_trace(tags={"mlflow.user": "x", "mlflow.trace.user": "y", "ok": "1"})
    (trace,) = events.traces()
    assert trace["tags"] == {"ok": "1", "mlflow.traceName": "s"}
    assert "reserved" in caplog.text


def test_token_usage_is_summed_over_spans(events: InMemoryExporter) -> None:
    with tracehouse.start_span("agent"):
        for usage in (
            {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
            json.dumps({"input_tokens": 1, "output_tokens": 2}),
            "not json",
        ):
            with tracehouse.start_span("llm", span_type="LLM") as llm:
                llm.set_attribute("mlflow.chat.tokenUsage", usage)
    (trace,) = events.traces()
    assert json.loads(trace["metadata"]["mlflow.trace.tokenUsage"]) == {
        "input_tokens": 11,
        "output_tokens": 7,
        "total_tokens": 18,
    }
    assert trace["metadata"]["mlflow.trace.tokenUsage"] == (
        '{"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}'
    )


def test_previews_truncate_to_250_chars(events: InMemoryExporter) -> None:
    @tracehouse.trace
    def echo(text: str) -> str:
        return text

    echo("é" * 1000)
    (trace,) = events.traces()
    for value in (
        trace["metadata"]["mlflow.traceInputs"],
        trace["metadata"]["mlflow.traceOutputs"],
        trace["request_preview"],
        trace["response_preview"],
    ):
        assert len(value) == 250
        assert value.endswith("...")
    assert trace["response_preview"].startswith('"éé')  # non-ASCII kept, as MLflow does


def test_ids_are_well_formed_and_unique(events: InMemoryExporter) -> None:
    import random

    random.seed(1)  # an application seeding the global RNG must not make ids collide
    with tracehouse.start_span("a") as a, tracehouse.start_span("b") as b:
        pass
    random.seed(1)
    with tracehouse.start_span("c") as c:
        pass
    ids = {a.trace_id, c.trace_id}
    assert len(ids) == 2
    assert len({a.span_id, b.span_id, c.span_id}) == 3
    for span in (a, b, c):
        assert len(span.span_id) == 16
        assert int(span.span_id, 16) > 0
        assert span.trace_id.startswith("tr-")
        assert int(span.trace_id[3:], 16) >= 0


def test_abandoned_traces_do_not_leak(events: InMemoryExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracehouse.producers import _trace

    monkeypatch.setattr(_trace, "MAX_ACTIVE_TRACES", 10)
    # 30 root spans opened in 30 separate contexts and never ended (yet)
    roots = [contextvars.Context().run(tracehouse.start_span(f"open-{i}").__enter__) for i in range(30)]
    assert len({span.trace_id for span in roots}) == 30
    assert len(_trace.ACTIVE_TRACES) <= 10
    for span in roots:  # forgotten traces still finish normally
        span.end()
    assert len(events.traces()) == 30
    assert not _trace.ACTIVE_TRACES
