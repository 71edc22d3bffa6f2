"""OTLP/HTTP ingest: the real OpenTelemetry SDK exporter, raw OTLP/JSON (hex ids, gzip), partial
success, and clear 4xx errors for bodies that are not OTLP."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import httpx
import pytest
from _stack import serving_stack
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tracehouse.app.embedded import TansuBroker
from tracehouse.schemas import Topics
from tracehouse.storage import Store

pytestmark = pytest.mark.integration


def search(http: httpx.Client, filter_string: str, experiment: str = "0") -> list[dict[str, Any]]:
    body = {"locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment}}],
            "filter": filter_string, "max_results": 500, "order_by": ["timestamp ASC"]}  # fmt: skip
    resp = http.post("/api/3.0/mlflow/traces/search", json=body)
    assert resp.status_code == 200, resp.text
    traces: list[dict[str, Any]] = resp.json().get("traces", [])
    return traces


def test_opentelemetry_sdk_exporter(broker: TansuBroker, store: Store) -> None:
    with serving_stack(broker, Topics(prefix="otel."), store) as stack, httpx.Client(
        base_url=stack.url, timeout=60
    ) as http:
        provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
        exporter = OTLPSpanExporter(endpoint=f"{stack.url}/v1/traces", headers={"x-mlflow-experiment-id": "42"})
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
        tracer = provider.get_tracer("test")
        expected: dict[str, tuple[str, str]] = {}
        for i in range(30):
            user, conversation = f"otel-user-{i % 3}", f"conv-{i % 5}"
            with tracer.start_as_current_span("agent", attributes={"user.id": user}) as root:
                root.set_attribute("gen_ai.conversation.id", conversation)
                with tracer.start_as_current_span("llm") as llm:
                    llm.set_attribute("gen_ai.usage.input_tokens", 10)
                    llm.set_attribute("gen_ai.usage.output_tokens", 5)
                    if i == 7:
                        llm.set_status(Status(StatusCode.ERROR, "rate limited"))
                        root.set_status(Status(StatusCode.ERROR, "rate limited"))
                expected[f"tr-{root.get_span_context().trace_id:032x}"] = (user, conversation)
        assert provider.force_flush(30_000)
        provider.shutdown()

        by_user = search(http, "metadata.`mlflow.trace.user` = 'otel-user-1'", "42")
        assert {t["trace_id"] for t in by_user} == {t for t, (u, _) in expected.items() if u == "otel-user-1"}
        by_session = search(http, "metadata.`mlflow.trace.session` = 'conv-2'", "42")
        assert {t["trace_id"] for t in by_session} == {t for t, (_, s) in expected.items() if s == "conv-2"}
        both_filter = "metadata.`mlflow.trace.user` = 'otel-user-1' AND metadata.`mlflow.trace.session` = 'conv-1'"
        both = search(http, both_filter, "42")
        assert {t["trace_id"] for t in both} == {t for t, v in expected.items() if v == ("otel-user-1", "conv-1")}
        assert all(t["tags"]["service.name"] == "support-bot" and t["tags"]["mlflow.traceName"] == "agent"
                   for t in by_user)  # fmt: skip
        failed = search(http, "status = 'ERROR'", "42")
        assert len(failed) == 1
        usage = json.loads(failed[0]["trace_metadata"]["mlflow.trace.tokenUsage"])
        assert usage == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        got = http.get("/api/3.0/mlflow/traces/get", params={"trace_id": failed[0]["trace_id"]}).json()["trace"]
        assert sorted(s["name"] for s in got["spans"]) == ["agent", "llm"]
        assert {s["status"]["code"] for s in got["spans"]} == {"STATUS_CODE_ERROR"}


def otlp_json(trace_hex: str, spans: list[dict[str, Any]], service: str = "ext") -> bytes:
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{"traceId": trace_hex, **s} for s in spans]}],
    }]}).encode()  # fmt: skip


def span(span_id: str, name: str, parent: str | None = None, **attrs: str) -> dict[str, Any]:
    now = time.time_ns()
    out: dict[str, Any] = {"spanId": span_id, "name": name, "startTimeUnixNano": str(now - 5_000_000),
                           "endTimeUnixNano": str(now), "status": {"code": 1},
                           "attributes": [{"key": k.replace("_", "."), "value": {"stringValue": v}}
                                          for k, v in attrs.items()]}  # fmt: skip
    if parent:
        out["parentSpanId"] = parent
    return out


def test_raw_otlp_json_gzip_out_of_order_retries_and_errors(broker: TansuBroker, store: Store) -> None:
    trace_hex = "0123456789abcdef0123456789abcdef"
    trace_id = f"tr-{trace_hex}"
    child = span("1111111111111111", "tool", parent="2222222222222222")
    root = span("2222222222222222", "ext-root", user_id="user-999", session_id="sess-999")
    headers = {"content-type": "application/json"}
    with serving_stack(broker, Topics(prefix="otlpjson."), store) as stack, httpx.Client(
        base_url=stack.url, timeout=60
    ) as http:
        # The child arrives first, gzip-compressed; the root later, and twice (a retry).
        r = http.post("/v1/traces", content=gzip.compress(otlp_json(trace_hex, [child])),
                      headers={**headers, "content-encoding": "gzip"})  # fmt: skip
        assert r.status_code == 200, r.text
        for _ in range(2):
            r = http.post("/v1/traces", content=otlp_json(trace_hex, [root]), headers=headers)
            assert r.status_code == 200
            assert r.json() == {}
        found = search(http, "metadata.`mlflow.trace.user` = 'user-999'")
        assert [t["trace_id"] for t in found] == [trace_id]
        assert found[0]["trace_metadata"]["mlflow.trace.session"] == "sess-999"
        got = http.get("/api/3.0/mlflow/traces/get", params={"trace_id": trace_id}).json()["trace"]
        assert sorted(s["name"] for s in got["spans"]) == ["ext-root", "tool"]  # each span stored once
        assert store.query("SELECT count() FROM traces FINAL WHERE trace_id = {t:String}", {"t": trace_id}) == [(1,)]

        # One bad trace (span id of the wrong length) is refused alone: OTLP partial success.
        good = otlp_json("fedcba9876543210fedcba9876543210", [span("3333333333333333", "ok-root")])
        bad = otlp_json("00112233445566778899aabbccddeeff", [span("44", "bad-root")])
        mixed = json.loads(good)
        mixed["resourceSpans"] += json.loads(bad)["resourceSpans"]
        r = http.post("/v1/traces", content=json.dumps(mixed).encode(), headers=headers)
        assert r.status_code == 200
        assert r.json()["partialSuccess"]["rejectedSpans"] == "1"
        assert "span_id" in r.json()["partialSuccess"]["errorMessage"]
        assert http.get("/api/3.0/mlflow/traces/tr-fedcba9876543210fedcba9876543210").status_code == 200

        for content, hdrs, status in [
            (otlp_json(trace_hex, [root]), {"content-type": "text/plain"}, 415),
            (b"not json", headers, 400),
            (b"\x00\x01garbage", {"content-type": "application/x-protobuf"}, 400),
            (b"not gzip", {**headers, "content-encoding": "gzip"}, 400),
            (b"{}", {**headers, "content-encoding": "br"}, 415),
        ]:
            r = http.post("/v1/traces", content=content, headers=hdrs)
            assert r.status_code == status, (hdrs, r.text)
            assert set(r.json()) == {"error_code", "message"}
