"""End to end on real parts: the SDK publishes to Tansu, the sink writes chDB, the client reads back.

Also `tracehouse up` as a real subprocess: ready banner, demo traffic, CLI queries over HTTP, and a
Ctrl-C that drains everything into ClickHouse before the in-memory broker goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tracehouse
from tracehouse.app.embedded import TansuBroker, ensure_topics, free_port
from tracehouse.processors import Sink, SinkConfig
from tracehouse.query import TraceClient
from tracehouse.schemas import Topics
from tracehouse.storage import Store

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = {"max_batch_age_ms": 100, "poll_timeout_ms": 100, "session_timeout_ms": 2000,
                        "heartbeat_interval_ms": 400}  # fmt: skip


def wait_for(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RunningSink:
    """A Sink on its own event loop in a thread, sharing the test's store."""

    def __init__(self, config: SinkConfig, store: Store) -> None:
        self.sink = Sink(config, store)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.sink.run(),), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Ask the sink to drain; run() returns once it has, which ends the thread."""
        self.loop.call_soon_threadsafe(self.sink.request_stop)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the sink did not drain within 30 s"
        self.loop.close()


@pytest.fixture
def pipeline(broker: TansuBroker, topics: Topics, store: Store) -> Iterator[tuple[Store, RunningSink]]:
    asyncio.run(ensure_topics(broker.bootstrap, topics, partitions=4))
    tracehouse.configure(kafka_bootstrap=broker.bootstrap, topic_prefix=topics.prefix, experiment_id="0")
    running = RunningSink(SinkConfig.resolve(bootstrap=broker.bootstrap, topic_prefix=topics.prefix,
                                             store_uri=store.uri, **FAST), store)  # fmt: skip
    try:
        yield store, running
    finally:
        tracehouse.shutdown()
        running.stop()


@tracehouse.trace(span_type="RETRIEVER")
def retrieve(query: str) -> list[str]:
    return [f"doc-{len(query)}", "doc-2"]


@tracehouse.trace
def chat_completion(user_id: str, session_id: str, message: str) -> str:
    tracehouse.update_current_trace(
        metadata={"mlflow.trace.user": user_id, "mlflow.trace.session": session_id},
        client_request_id=f"req-{session_id}-{message}",
        tags={"env": "prod"},
    )
    docs = retrieve(message)
    with tracehouse.start_span("llm", span_type="LLM") as span:
        span.set_inputs({"docs": docs})
        if message == "boom":
            raise ValueError("model exploded")
        span.set_outputs("ok")
    return f"answer to {message}"


def test_round_trip_sdk_kafka_clickhouse_search(pipeline: tuple[Store, RunningSink]) -> None:
    store, _ = pipeline
    expected: dict[str, tuple[str, str, str]] = {}
    for u in range(3):
        for s in range(2):
            for msg in ["hi", "more", "boom" if (u + s) % 2 else "bye"]:
                user, session = f"user-{u}", f"session-{u}-{s}"
                with contextlib.suppress(ValueError):
                    chat_completion(user, session, msg)
                tid = tracehouse.get_last_active_trace_id()
                assert tid is not None
                expected[tid] = (user, session, "ERROR" if msg == "boom" else "OK")
    tagged = next(iter(expected))
    tracehouse.set_trace_tag(tagged, "reviewed", "yes")
    tracehouse.delete_trace_tag(tagged, "env")
    assert tracehouse.flush(timeout=20)

    client = TraceClient.from_store(store)

    def all_there() -> bool:
        t = client.get_trace(tagged)
        return len(client.search_traces(max_results=1000)) == len(expected) and t is not None and \
            "reviewed" in t.info.tags and "env" not in t.info.tags  # fmt: skip

    wait_for(all_there, what="every trace and tag in ClickHouse")

    traces = client.search_traces(
        experiment_ids=["0"],
        filter_string="metadata.`mlflow.trace.user` = 'user-1' AND metadata.`mlflow.trace.session` = 'session-1-0'",
        max_results=1000,
        order_by=["timestamp ASC"],
    )
    want = [tid for tid, (u, s, _) in expected.items() if (u, s) == ("user-1", "session-1-0")]
    assert sorted(t.info.trace_id for t in traces) == sorted(want)
    stamps = [t.info.timestamp_ms for t in traces]
    assert stamps == sorted(stamps)
    for t in client.search_traces(max_results=1000):
        user, session, state = expected[t.info.trace_id]
        assert t.info.metadata["mlflow.trace.user"] == user
        assert t.info.metadata["mlflow.trace.session"] == session
        assert t.info.state == state
        assert t.info.client_request_id is not None
        assert t.info.client_request_id.startswith(f"req-{session}-")
        spans = {s.name: s for s in t.data.spans}
        assert set(spans) == {"chat_completion", "retrieve", "llm"}
        root = spans["chat_completion"]
        assert spans["retrieve"].parent_id == root.span_id
        assert spans["llm"].parent_id == root.span_id
        assert spans["retrieve"].span_type == "RETRIEVER"
        assert root.inputs == {"user_id": user, "session_id": session, "message": root.inputs["message"]}
        if state == "ERROR":
            assert any(e.name == "exception" and e.attributes["exception.type"] == "ValueError"
                       for e in spans["llm"].events)  # fmt: skip
        else:
            assert root.outputs == f"answer to {root.inputs['message']}"
        if t.info.trace_id != tagged:
            assert t.info.tags["env"] == "prod"
    errors = client.search_traces(filter_string="status = 'ERROR' AND span.type = 'LLM'", max_results=1000)
    assert {t.info.trace_id for t in errors} == {tid for tid, (*_, st) in expected.items() if st == "ERROR"}


def test_middleware_headers_become_searchable_identity(pipeline: tuple[Store, RunningSink]) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    store, _ = pipeline

    async def chat(request: Request) -> JSONResponse:
        return JSONResponse({"reply": retrieve("hello")})

    app = Starlette(routes=[Route("/chat", chat, methods=["POST"])])
    app.add_middleware(tracehouse.TracehouseMiddleware)

    async def send() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
            for i in range(3):
                r = await http.post("/chat", headers={"X-User-ID": "alice", "X-Session-ID": "s-42",
                                                      "X-Request-ID": f"rq-{i}"})  # fmt: skip
                assert r.status_code == 200
            await http.post("/chat")  # no headers: no identity, still a trace

    asyncio.run(send())
    assert tracehouse.flush(timeout=20)
    client = TraceClient.from_store(store)
    wait_for(lambda: len(client.search_traces(max_results=100)) == 4, what="4 request traces")
    mine = client.search_traces(filter_string="metadata.`mlflow.trace.session` = 's-42'", order_by=["timestamp ASC"])
    assert sorted(t.info.client_request_id or "" for t in mine) == ["rq-0", "rq-1", "rq-2"]
    assert {t.info.metadata["mlflow.trace.user"] for t in mine} == {"alice"}
    anonymous = client.search_traces(filter_string="metadata.`mlflow.trace.user` IS NULL")
    assert len(anonymous) == 1
    assert anonymous[0].info.client_request_id is None


# ------------------------------------------------------------------------------- tracehouse up


def _tracehouse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracehouse.app", *args], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip


def _up_with_demo(data_dir: Path, queries: bool) -> tuple[int, list[str]]:
    """Run `tracehouse up --demo` until its demo traffic is queryable, then Ctrl-C it.
    Returns the number of demo traces sent and the output lines."""
    port, kafka_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracehouse.app", "up", "--port", str(port), "--kafka-port", str(kafka_port),
         "--data-dir", str(data_dir), "--partitions", "4", "--demo"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any("tracehouse is up" in ln for ln in lines), 60, "the ready banner")
        assert any(f"http://127.0.0.1:{port}" in ln for ln in lines)
        assert any(f"127.0.0.1:{kafka_port}" in ln for ln in lines)
        wait_for(lambda: any(ln.startswith("demo: sent") for ln in lines), 90, "the demo to finish")
        sent = int(next(ln for ln in lines if ln.startswith("demo: sent")).split()[2])
        if queries:
            url = f"http://127.0.0.1:{port}"

            def stored() -> int:
                out = _tracehouse("search", "--max-results", "100000", "--format", "json", "--uri", url)
                return len(json.loads(out.stdout)) if out.returncode == 0 else -1

            wait_for(lambda: stored() == sent, 60, f"{sent} demo traces to be queryable")
            user = _tracehouse("user", "user-0000", "--format", "json", "--uri", url)
            assert user.returncode == 0, user.stderr
            assert json.loads(user.stdout)[0]["total_traces"] > 0
            session = _tracehouse("session", "session-7-00000", "--format", "json", "--uri", url)
            turns = json.loads(session.stdout)
            assert [t["turn"] for t in turns] == list(range(1, len(turns) + 1))
            assert httpx.get(url + "/").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    reader.join(5)
    assert proc.returncode == 0, "\n".join(lines)
    assert any(ln.startswith("stopped:") for ln in lines), "\n".join(lines)
    return sent, lines


def test_tracehouse_up_demo_query_clean_drain_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first, _ = _up_with_demo(data_dir, queries=True)
    with Store(f"chdb://{data_dir / 'chdb'}") as store:  # the store is ours again once `up` is gone
        assert store.query("SELECT count() FROM traces FINAL")[0][0] == first
        # The sessionizer's records of the demo's 50 sessions, drained before `up` stopped, equal the
        # sessions computed from the stored traces.
        from_traces = store.query(
            "SELECT session_id, count(), min(timestamp_ms), countIf(state = 'ERROR') FROM traces FINAL "
            "GROUP BY session_id ORDER BY session_id"
        )
        records = store.query("SELECT session_id, turns, first_ms, error_turns FROM sessions FINAL ORDER BY session_id")
        assert len(records) == 50
        assert records == from_traces
        # ... and the per-user rollups count every demo trace once, per user as the traces do.
        rollups = store.query("SELECT user_id, sum(interactions) FROM user_rollups_daily GROUP BY user_id ORDER BY 1")
        per_user = store.query("SELECT user_id, count() FROM traces FINAL GROUP BY user_id ORDER BY 1")
        assert rollups == per_user
    # A second run starts a fresh in-memory broker at offset 0 over the same store: its traces must not
    # be mistaken for replays of the first run's batches.
    second, lines = _up_with_demo(data_dir, queries=False)
    # the demo's traces, its 50 session records and one user_trace fact per trace
    assert any(ln.startswith(f"stopped: {2 * second + 50} events written") for ln in lines), "\n".join(lines)
    with Store(f"chdb://{data_dir / 'chdb'}") as store:
        assert store.query("SELECT count() FROM traces")[0][0] == first + second
