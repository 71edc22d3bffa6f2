"""The gateway's contract: what it accepts, how it refuses (MLflow's error shape, always 4xx for bad
input), idempotent ingest in any order, read-your-writes, auth and configuration."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _serve import serving
from _stack import serving_stack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracehouse.app.embedded import TansuBroker
from tracehouse.app.server import AuthConfig, create_app
from tracehouse.gateway import Gateway, GatewayConfig, artifact_spans, event_key, trace_info_events
from tracehouse.schemas import Topics
from tracehouse.schemas.errors import InvalidRequest
from tracehouse.storage import Store

TRACE = "tr-" + "ab" * 16


def start_trace_body(trace_id: str = TRACE, **info: Any) -> dict[str, Any]:
    base = {
        "trace_id": trace_id, "client_request_id": "req-1",
        "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": "0"}},
        "request_time": "2026-11-22T10:30:01.182Z", "execution_duration": "0.067s", "state": "OK",
        "trace_metadata": {"mlflow.trace.user": "u-1", "mlflow.trace.session": "s-1",
                           "mlflow.trace.sizeStats": json.dumps({"num_spans": 2})},
        "tags": {"env": "prod", "mlflow.traceName": "chat"},
        "request_preview": '{"q": "hi"}', "response_preview": '"hello"',
    }  # fmt: skip
    return {"trace": {"trace_info": {**base, **info}}}


def traces_json(trace_id: str = TRACE) -> bytes:
    tid = base64.b64encode(bytes.fromhex(trace_id[3:])).decode()
    now = time.time_ns()

    def span(sid: str, name: str, parent: str | None) -> dict[str, Any]:
        return {"trace_id": tid, "span_id": base64.b64encode(bytes.fromhex(sid)).decode(),
                "parent_span_id": base64.b64encode(bytes.fromhex(parent)).decode() if parent else None,
                "name": name, "start_time_unix_nano": now, "end_time_unix_nano": now + 1000, "events": [],
                "status": {"code": "STATUS_CODE_OK", "message": ""},
                "attributes": {"mlflow.spanType": '"LLM"', "mlflow.spanInputs": '{"q": "hi"}',
                               "mlflow.traceRequestId": json.dumps(trace_id)}, "links": []}  # fmt: skip

    spans = [span("00" * 7 + "01", "chat", None), span("00" * 7 + "02", "llm", "00" * 7 + "01")]
    return json.dumps({"spans": spans}).encode()


def test_start_trace_becomes_a_trace_event_keyed_by_session() -> None:
    event, assessments = trace_info_events(start_trace_body())
    assert (event.trace_id, event.timestamp_ms, event.execution_time_ms) == (TRACE, 1795343401182, 67)
    assert event.client_request_id == "req-1"
    assert event.tags["env"] == "prod"
    assert not event.spans
    assert assessments == []
    assert event_key(event) == "s-1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trace_id": "not-a-trace-id"}, "trace_id"),
        ({"state": "STATE_UNSPECIFIED"}, "state"),
        ({"request_time": "yesterday"}, "timestamp"),
        ({"trace_metadata": {"k" * 300: "v"}}, "length <= 250 - at `key` in `$.metadata`"),
    ],
)
def test_invalid_trace_info_is_refused_with_a_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        trace_info_events(start_trace_body(**change))
    assert message in str(err.value)
    assert err.value.status == 400


def test_traces_json_spans_are_parsed_and_checked() -> None:
    spans = artifact_spans(TRACE, traces_json())
    assert [(s["name"], s["span_type"], s.get("parent_span_id")) for s in spans] == [
        ("chat", "LLM", None), ("llm", "LLM", "0000000000000001")]  # fmt: skip
    assert spans[0]["attributes"]["mlflow.spanInputs"] == {"q": "hi"}
    with pytest.raises(InvalidRequest, match="belongs to trace"):
        artifact_spans("tr-" + "cd" * 16, traces_json())
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        artifact_spans(TRACE, b"{")


def test_config_precedence_and_auth_rules() -> None:
    env = {"TRACEHOUSE_KAFKA_BOOTSTRAP": "k:9", "TRACEHOUSE_SINK_GROUP": "g",
           "TRACEHOUSE_READ_YOUR_WRITES_TIMEOUT_S": "3"}  # fmt: skip
    assert GatewayConfig.resolve(env=env) == GatewayConfig("k:9", "tracehouse.", "g", 3.0)
    assert GatewayConfig.resolve(bootstrap="x:1", env=env).bootstrap == "x:1"
    with pytest.raises(ValueError, match="seconds"):
        GatewayConfig.resolve(env={"TRACEHOUSE_READ_YOUR_WRITES_TIMEOUT_S": "soon"})
    assert AuthConfig.resolve(env={}).enabled is False
    auth = AuthConfig.resolve(env={"TRACEHOUSE_AUTH_TOKEN": "t0k", "TRACEHOUSE_AUTH_USERNAME": "ml"})
    basic = "Basic " + base64.b64encode(b"ml:t0k").decode()
    assert auth.allows("Bearer t0k")
    assert auth.allows(basic)
    assert not auth.allows("Bearer nope")
    assert not auth.allows(None)
    assert not auth.allows("Basic !!")
    assert not auth.allows("Basic " + base64.b64encode(b"other:t0k").decode())


@pytest.mark.integration
def test_idempotent_in_any_order_errors_and_read_your_writes(broker: TansuBroker, store: Store) -> None:
    put = f"/api/2.0/mlflow-artifacts/artifacts/0/traces/{TRACE}/artifacts/traces.json"
    with serving_stack(broker, Topics(prefix="gw."), store, fence="sink") as stack, httpx.Client(
        base_url=stack.url, timeout=60
    ) as http:
        # Spans first (a race), then the trace record, then both again (client retries).
        assert http.put(put, content=traces_json()).status_code == 200
        for _ in range(2):
            r = http.post("/api/3.0/mlflow/traces", json=start_trace_body())
            assert r.status_code == 200, r.text
            tags = r.json()["trace"]["trace_info"]["tags"]
            assert tags["mlflow.artifactLocation"] == f"mlflow-artifacts:/0/traces/{TRACE}/artifacts"
            assert "mlflow.trace.spansLocation" not in tags
        assert http.put(put, content=traces_json()).status_code == 200
        # Read-your-writes: no sleeping, the read waits for the sink.
        got = http.get("/api/3.0/mlflow/traces/get", params={"trace_id": TRACE, "allow_partial": "False"}).json()
        assert [s["name"] for s in got["trace"]["spans"]] == ["chat", "llm"]
        info = got["trace"]["trace_info"]
        assert info["tags"]["mlflow.trace.spansLocation"] == "TRACKING_STORE"
        assert info["trace_metadata"]["mlflow.trace.user"] == "u-1"
        assert store.query(f"SELECT count() FROM traces FINAL WHERE trace_id = '{TRACE}'") == [(1,)]
        assert store.query(f"SELECT count() FROM spans FINAL WHERE trace_id = '{TRACE}'") == [(2,)]
        assert store.query(f"SELECT span_count, user_id FROM traces FINAL WHERE trace_id = '{TRACE}'") == [(2, "u-1")]
        artifact = http.get(put).json()
        assert sorted(s["name"] for s in artifact["spans"]) == ["chat", "llm"]
        assert artifact["spans"][0]["attributes"]["mlflow.spanType"] == '"LLM"'

        # A retried feedback (same content) is stored once.
        fb = {"assessment": {"assessment_name": "thumbs", "trace_id": TRACE, "feedback": {"value": True},
                             "source": {"source_type": "HUMAN", "source_id": "u"},
                             "create_time": "2026-11-22T10:31:07.723Z"}}  # fmt: skip
        ids = {http.post(f"/api/3.0/mlflow/traces/{TRACE}/assessments", json=fb).json()["assessment"]["assessment_id"]
               for _ in range(2)}  # fmt: skip
        assert len(ids) == 1
        info = http.get(f"/api/3.0/mlflow/traces/{TRACE}").json()["trace"]["trace_info"]
        assert [a["assessment_name"] for a in info["assessments"]] == ["thumbs"]

        # Bad input: a 4xx with MLflow's error body, never a 5xx.
        bad: list[tuple[str, str, Any, int, str]] = [
            ("POST", "/api/3.0/mlflow/traces", b"{", 400, "MALFORMED_REQUEST"),
            ("POST", "/api/3.0/mlflow/traces", start_trace_body(trace_id="tr-123"), 400, "INVALID_PARAMETER_VALUE"),
            ("PUT", put.replace("traces.json", "attachments/x"), b"x", 501, "NOT_IMPLEMENTED"),
            ("PUT", put, b"[]", 400, "INVALID_PARAMETER_VALUE"),
            ("PATCH", "/api/2.0/mlflow/traces/tr-x/tags", {"key": "a", "value": "b"}, 400, "INVALID_PARAMETER_VALUE"),
            ("PATCH", f"/api/2.0/mlflow/traces/{TRACE}/tags", {"key": "mlflow.artifactLocation", "value": "x"}, 400,
             "INVALID_PARAMETER_VALUE"),
            ("PATCH", f"/api/2.0/mlflow/traces/{TRACE}/tags", {"key": "a"}, 400, "INVALID_PARAMETER_VALUE"),
            ("PATCH", f"/api/2.0/mlflow/traces/{TRACE}/tags", {"key": ["a"], "value": "b"}, 400,
             "INVALID_PARAMETER_VALUE"),
            ("DELETE", f"/api/2.0/mlflow/traces/{TRACE}/tags", {"key": {"a": 1}}, 400, "INVALID_PARAMETER_VALUE"),
            ("POST", f"/api/3.0/mlflow/traces/{TRACE}/assessments", {"assessment": {"assessment_name": "x"}}, 400,
             "INVALID_PARAMETER_VALUE"),
            ("POST", "/api/3.0/mlflow/traces/search", {"filter": "metadata.x = 5"}, 400, "INVALID_PARAMETER_VALUE"),
            ("POST", "/api/3.0/mlflow/traces/search", {"order_by": ["end_time DESC"]}, 200, ""),
            ("GET", "/api/3.0/mlflow/traces/tr-" + "ef" * 16, None, 404, "RESOURCE_DOES_NOT_EXIST"),
            ("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=no", None, 404,
             "RESOURCE_DOES_NOT_EXIST"),
            ("GET", "/version", None, 404, ""),
        ]  # fmt: skip
        for method, path, body, status, code in bad:
            kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body} if body else {}
            r = http.request(method, path, **kwargs)
            assert r.status_code == status, (method, path, r.text)
            if code:
                assert r.json()["error_code"] == code, r.text

        # Experiments: "0" always exists; create is idempotent by name.
        assert http.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": "0"}).json()["experiment"][
            "lifecycle_stage"] == "active"  # fmt: skip
        created = http.post("/api/2.0/mlflow/experiments/create", json={"name": "demo"}).json()["experiment_id"]
        again = http.post("/api/2.0/mlflow/experiments/create", json={"name": "demo"})
        assert again.status_code == 400
        assert again.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
        by_name = http.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "demo"}).json()
        assert by_name["experiment"]["experiment_id"] == created


#: Field names the routes read, so generated objects reach the parsers' deeper paths.
FIELDS = ["trace_id", "trace_info", "trace", "request_time", "execution_duration", "state", "trace_metadata",
          "tags", "trace_location", "mlflow_experiment", "experiment_id", "assessments", "key", "value", "spans",
          "span_id", "parent_span_id", "attributes", "events", "status", "code", "name", "assessment_name",
          "feedback", "expectation", "source", "source_type", "scopeSpans", "resource", "traceId", "spanId",
          "startTimeUnixNano", "filter", "order_by", "max_results", "page_token", "locations"]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
WRITE_ROUTES = [
    ("POST", "/api/3.0/mlflow/traces", lambda v: {"trace": {"trace_info": v}}),
    ("POST", "/api/3.0/mlflow/traces", lambda v: v),
    ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/0/traces/{TRACE}/artifacts/traces.json", lambda v: {"spans": v}),
    ("PATCH", f"/api/2.0/mlflow/traces/{TRACE}/tags", lambda v: v),
    ("POST", f"/api/3.0/mlflow/traces/{TRACE}/assessments", lambda v: {"assessment": v}),
    ("POST", "/v1/traces", lambda v: {"resourceSpans": v}),
    ("POST", "/api/3.0/mlflow/traces/search", lambda v: v),
    ("POST", "/api/2.0/mlflow/experiments/create", lambda v: {"name": v}),
]


@pytest.fixture
def offline_app(store: Store) -> Iterator[httpx.Client]:
    """The app with a gateway that is never started: anything that passes validation would need
    Kafka and gets 501, so every other answer comes from validation alone."""
    gateway = Gateway(GatewayConfig("127.0.0.1:1"))
    with serving(store, create_app(store, gateway=gateway, manage_gateway=False)) as url, httpx.Client(
        base_url=url, timeout=30
    ) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(WRITE_ROUTES), value=json_values)
def test_arbitrary_json_never_gets_a_retryable_5xx(offline_app: httpx.Client, route: Any, value: Any) -> None:
    method, path, wrap = route
    r = offline_app.request(method, path, content=json.dumps(wrap(value)), headers={"content-type": "application/json"})
    assert r.status_code < 500 or r.status_code == 501, r.text
    if r.status_code >= 400:
        assert set(r.json()) == {"error_code", "message"}
