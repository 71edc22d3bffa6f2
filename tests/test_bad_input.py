"""Bad input never costs good data: each bad line of an envelope is dead-lettered alone with its reason
while the rest is stored (real broker, sink and chDB), and the HTTP endpoints answer bad requests with
a 4xx and an MLflow error body, never a 5xx."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from _serve import serving
from aiokafka import AIOKafkaProducer
from test_sink_kafka import config, create_topics, make_trace, running, trace_id

from tracehouse.app.embedded import TansuBroker
from tracehouse.app.server import create_app
from tracehouse.gateway import Gateway, GatewayConfig
from tracehouse.processors import DEFAULT_MAX_EVENT_BYTES, WHOLE_MESSAGE, Rejection, Sink, read_dlq, validate_line
from tracehouse.processors._dlq import RefusalLimit
from tracehouse.schemas import Topics, TraceEvent, encode_envelope, envelope_headers
from tracehouse.storage import Store

# ----------------------------------------------------------------------------------- bad lines


def with_changes(i: int, **changes: Any) -> bytes:
    """Trace ``i`` of the sink tests with some fields replaced."""
    return orjson.dumps({**orjson.loads(make_trace(i)), **changes})


def oversized(i: int) -> bytes:
    """A valid trace just over the sink's default event limit (and under what a dead letter may hold)."""
    line = with_changes(i, request_preview="", metadata={f"k{n}": "x" * 7000 for n in range(135)})
    assert DEFAULT_MAX_EVENT_BYTES < len(line) < 1024 * 1024 - 8192
    return line


#: (bad line, what its reason must say). Each would be stored if it were not bad.
BAD_LINES: dict[str, tuple[bytes, str]] = {
    "malformed": (make_trace(1).replace(b'"trace_id":', b'"trace_id"', 1), "undecodable event: JSON is malformed"),
    "truncated": (make_trace(2)[:300], "undecodable event: Input data was truncated"),
    "not-utf8": (make_trace(3).replace(b"lorem", b"lor\xe9m", 1), "not UTF-8 text (invalid continuation byte"),
    "raw-nul": (make_trace(4).replace(b"lorem", b"lo\x00rem", 1), "raw NUL byte at byte"),
    "oversized": (oversized(5), f"oversized event: the line is {len(oversized(5))} bytes, over the limit of 921600"),
    "metadata-value": (
        with_changes(6, metadata={"mlflow.trace.user": "u", "notes": "n" * 8001}),
        "metadata value of key 'notes' is 8001 characters, over the limit of 8000",
    ),
    "metadata-key": (with_changes(7, metadata={"k" * 251: "v"}), "is 251 characters; keys have 1 to 250"),
    "schema-v2": (with_changes(8, schema_version=2), "unsupported schema version: schema_version is 2, this sink"),
    "unknown-type": (with_changes(9, type="trace_v2"), "invalid event: Invalid value 'trace_v2' - at `$.type`"),
}


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_each_bad_line_is_refused_with_a_reason_that_says_what_is_wrong(name: str) -> None:
    line, says = BAD_LINES[name]
    result = validate_line(line)
    assert isinstance(result, Rejection), result
    assert says in result.reason


def test_an_escaped_nul_inside_a_string_is_data() -> None:
    line = with_changes(10, request_preview="a\x00b")
    assert b"\\u0000" in line
    assert b"\x00" not in line
    event = validate_line(line)
    assert isinstance(event, TraceEvent)
    assert event.request_preview == "a\x00b"


def test_the_size_limit_is_the_callers() -> None:
    line = make_trace(11)
    assert isinstance(validate_line(line, len(line)), TraceEvent)
    refused = validate_line(line, len(line) - 1)
    assert isinstance(refused, Rejection)
    assert f"over the limit of {len(line) - 1} bytes" in refused.reason


def test_refusal_limit_trips_on_consecutive_refusals_and_good_lines_reset_it() -> None:
    limit = RefusalLimit(max_consecutive=3, max_ratio=1.0, window=10)
    assert limit.refused("a") is None
    assert limit.refused("b") is None
    limit.good(1)
    assert limit.refused("c") is None
    assert limit.refused("d") is None
    tripped = limit.refused("e")
    assert tripped is not None
    assert "3 lines in a row" in tripped
    assert limit.last_reason == "e"
    assert RefusalLimit(0, 1.0, 10).refused("x") is None  # 0: the check is off


def test_refusal_limit_trips_on_the_share_of_a_full_window_only() -> None:
    limit = RefusalLimit(max_consecutive=0, max_ratio=0.5, window=10)
    for _ in range(5):  # 5 of 5: more than half, but the window is not full yet
        assert limit.refused("r") is None
    limit.good(5)
    assert (limit.lines_in_window, limit.refused_in_window) == (10, 5)
    for _ in range(5):  # each replaces the oldest line, a refused one: still 5 of the last 10
        assert limit.refused("r") is None
    tripped = limit.refused("r")  # replaces a good line: 6 of the last 10
    assert tripped is not None
    assert "6 of the last 10 lines were refused, more than 50%" in tripped
    later = RefusalLimit(max_consecutive=0, max_ratio=0.5, window=10)
    later.good(5)
    for _ in range(5):
        assert later.refused("r") is None  # exactly half is not more than half
    later.good(100)  # the refusals leave the window
    assert later.refused_in_window == 0
    assert RefusalLimit(0, 1.0, 2).refused("r") is None  # 1: the check is off


def test_one_envelope_mixing_good_and_bad_lines_stores_the_good_ones_and_dead_letters_each_bad_one(
    broker: TansuBroker, topics: Topics, store: Store, store_uri: str
) -> None:
    good = [make_trace(100), make_trace(101), make_trace(102), make_trace(103)]
    escaped = with_changes(104, request_preview="a\x00b")
    lines: list[bytes] = []
    bad_at: dict[int, str] = {}
    for n, (name, (bad, _)) in enumerate(BAD_LINES.items()):
        if n < len(good):
            lines.append(good[n])
        if name == "raw-nul":
            lines.append(escaped)
        bad_at[len(lines)] = name
        lines.append(bad)
    mixed = encode_envelope(lines)
    avro = (encode_envelope([make_trace(105)]), [("th-format", b"avro")])
    schema2 = (encode_envelope([make_trace(106)]), [("th-format", b"ndjson"), ("th-schema", b"2")])
    after = (encode_envelope([make_trace(107)]), envelope_headers(1))

    async def main() -> Sink:
        await create_topics(broker.bootstrap, topics, 1)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            for value, headers in [(mixed, envelope_headers(len(lines))), avro, schema2, after]:
                await producer.send_and_wait(topics.traces, value, key=b"k", partition=0, headers=headers)
        finally:
            await producer.stop()
        sink = Sink(config(broker, topics, store_uri), store)  # the default limits: none of this trips them
        async with running(sink):
            assert await sink.wait_committed({(topics.traces, 0): 3}, timeout_s=30)
        return sink

    sink = asyncio.run(main())
    stored = {r[0] for r in store.query("SELECT trace_id FROM traces")}
    assert stored == {trace_id(i) for i in (100, 101, 102, 103, 104, 107)}
    # The escaped NUL is data, stored as it was sent.
    row = store.query("SELECT request_preview FROM traces WHERE trace_id = {t:String}", {"t": trace_id(104)})
    assert row == [("a\x00b",)]
    assert int(store.query("SELECT count() FROM spans")[0][0]) == 6 * 3

    letters = asyncio.run(read_dlq(broker.bootstrap, topics))
    by_origin = {(d.origin_offset, d.origin_line): d for d in letters}
    assert len(letters) == len(by_origin) == len(BAD_LINES) + 2
    for line_no, name in bad_at.items():
        letter = by_origin[(0, line_no)]
        assert letter.value == BAD_LINES[name][0], name
        assert BAD_LINES[name][1] in letter.reason, (name, letter.reason)
    assert "unsupported envelope format b'avro'" in by_origin[(1, WHOLE_MESSAGE)].reason
    assert "th-schema header is b'2'" in by_origin[(2, WHOLE_MESSAGE)].reason
    stats = sink.stats()
    assert (stats.events_written, stats.events_rejected) == (6, len(BAD_LINES) + 2)


# ----------------------------------------------------------------------------------- over HTTP

T = "tr-" + "ab" * 16
LIMIT = 256 * 1024
JSON = {"content-type": "application/json"}


@pytest.fixture
def http(store: Store) -> Iterator[httpx.Client]:
    """The app with a small body limit and a gateway that is never started: whatever passes
    validation would need Kafka and gets 501, so every other answer comes from validation alone."""
    app = create_app(store, gateway=Gateway(GatewayConfig("127.0.0.1:1")), manage_gateway=False, max_body_bytes=LIMIT)
    with serving(store, app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def mlflow_error(r: httpx.Response, status: int, code: str = "INVALID_PARAMETER_VALUE") -> str:
    """Assert an MLflow error answer; return its message."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == code
    message: str = body["message"]
    return message


BODY_ROUTES = [
    ("POST", "/api/3.0/mlflow/traces", JSON),
    ("POST", "/api/3.0/mlflow/traces/search", JSON),
    ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/0/traces/{T}/artifacts/traces.json", {"content-type": "text/plain"}),
    ("PATCH", f"/api/2.0/mlflow/traces/{T}/tags", JSON),
    ("POST", f"/api/3.0/mlflow/traces/{T}/assessments", JSON),
    ("POST", "/api/2.0/mlflow/experiments/create", JSON),
    ("POST", "/api/tracehouse/v1/traces/search", JSON),
    ("POST", "/v1/traces", {"content-type": "application/x-protobuf"}),
]


@pytest.mark.parametrize(("method", "path", "headers"), BODY_ROUTES, ids=[p for _, p, _ in BODY_ROUTES])
def test_oversized_bodies_are_413_by_length_or_while_streaming(
    http: httpx.Client, method: str, path: str, headers: dict[str, str]
) -> None:
    body = b'{"x": "' + b"a" * LIMIT + b'"}'
    message = mlflow_error(http.request(method, path, content=body, headers=headers), 413)
    assert f"Content-Length {len(body)}, over the limit of {LIMIT} bytes" in message

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(8):
            yield b"a" * (LIMIT // 4)

    message = mlflow_error(http.request(method, path, content=chunked(), headers=headers), 413)
    assert "received so far" in message
    # At the limit it is read (and judged on its merits, never a 5xx).
    at_limit = http.request(method, path, content=b" " * (LIMIT - 2) + b"{}", headers=headers)
    assert at_limit.status_code != 413
    assert at_limit.status_code < 500 or at_limit.status_code == 501


def test_an_event_kafka_would_refuse_is_413_not_a_retryable_5xx(store: Store) -> None:
    app = create_app(store, gateway=Gateway(GatewayConfig("127.0.0.1:1")), manage_gateway=False)
    info = {"trace_id": T, "request_time": "2026-01-01T00:00:00Z", "execution_duration": "1s", "state": "OK",
            "tags": {f"k{i}": "v" * 8000 for i in range(130)},
            "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": "0"}}}  # fmt: skip
    with serving(store, app) as url:
        r = httpx.post(f"{url}/api/3.0/mlflow/traces", json={"trace": {"trace_info": info}}, timeout=30)
    message = mlflow_error(r, 413)
    assert f"TraceEvent of trace {T} is" in message
    assert "the limit is 921600" in message


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("POST", "/api/3.0/mlflow/traces", "text/plain"),
        ("POST", "/api/3.0/mlflow/traces/search", "application/x-www-form-urlencoded"),
        ("PATCH", f"/api/2.0/mlflow/traces/{T}/tags", "text/csv"),
        ("POST", f"/api/3.0/mlflow/traces/{T}/assessments", "application/xml"),
        ("POST", "/api/2.0/mlflow/experiments/create", "multipart/form-data; boundary=x"),
        ("POST", "/api/tracehouse/v1/traces/search", "text/plain; charset=utf-8"),
        ("POST", "/v1/traces", "text/plain"),
        ("POST", "/v1/traces", None),
    ],
)
def test_wrong_content_types_are_415(http: httpx.Client, method: str, path: str, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    message = mlflow_error(http.request(method, path, content=b'{"name": "x"}', headers=headers), 415)
    assert "Content-Type" in message
    # The same body as JSON gets past the media type check (then passes or fails on its merits).
    ok = http.request(method, path, content=b'{"name": "x"}', headers={"content-type": "application/json"})
    assert ok.status_code != 415


def test_json_with_a_charset_or_without_a_content_type_is_read(http: httpx.Client) -> None:
    for headers in ({"content-type": "application/json; charset=utf-8"}, {}):
        r = http.post("/api/3.0/mlflow/traces/search", content=b"{}", headers=headers)
        assert r.status_code == 200, r.text


def test_bad_ids_are_400_and_unknown_ones_404_as_mlflow_answers(http: httpx.Client) -> None:
    missing = "tr-" + "0" * 32
    for path in (f"/api/3.0/mlflow/traces/{missing}", f"/api/3.0/mlflow/traces/get?trace_id={missing}",
                 "/api/3.0/mlflow/traces/not-an-id", f"/api/tracehouse/v1/traces/{missing}",
                 f"/api/2.0/mlflow-artifacts/artifacts/0/traces/{missing}/artifacts/traces.json"):  # fmt: skip
        assert "not found" in mlflow_error(http.get(path), 404, "RESOURCE_DOES_NOT_EXIST"), path
    mlflow_error(http.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": "nope"}), 404,
                 "RESOURCE_DOES_NOT_EXIST")  # fmt: skip
    for method, path in (("PATCH", "/api/2.0/mlflow/traces/nope/tags"),
                         ("DELETE", "/api/2.0/mlflow/traces/TR-X/tags"),
                         ("POST", "/api/3.0/mlflow/traces/tr-123/assessments")):  # fmt: skip
        message = mlflow_error(http.request(method, path, json={"key": "k", "value": "v"}), 400)
        assert "invalid trace id" in message
    mlflow_error(http.get("/api/3.0/mlflow/traces/batchGet"), 400)
    mlflow_error(http.get("/api/3.0/mlflow/traces/batchGet", params={"trace_ids": [missing] * 101}), 400)
    mlflow_error(http.get("/api/3.0/mlflow/traces/get"), 400)


@pytest.mark.parametrize("token", ["garbage", "eyJ4IjoxfQ==", "%00", "////", "e30="])
def test_bad_page_tokens_are_400(http: httpx.Client, token: str) -> None:
    mlflow_error(http.post("/api/3.0/mlflow/traces/search", json={"page_token": token}), 400)
    mlflow_error(http.post("/api/tracehouse/v1/traces/search", json={"page_token": token}), 400)
    for path in ("/api/tracehouse/v1/users", "/api/tracehouse/v1/sessions", "/api/tracehouse/v1/sessions/s-1"):
        assert "page token" in mlflow_error(http.get(path, params={"page_token": token}), 400).lower(), path


def test_wrong_methods_are_405_with_an_mlflow_body(http: httpx.Client) -> None:
    r = http.delete("/api/3.0/mlflow/traces/search")
    assert "allowed: POST" in mlflow_error(r, 405, "BAD_REQUEST")
    assert r.headers["allow"] == "POST"
    mlflow_error(http.put("/health"), 405, "BAD_REQUEST")
    assert http.get("/no/such/route").json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_garbage_bodies_are_4xx(http: httpx.Client) -> None:
    for method, path, headers in BODY_ROUTES:
        for body in (b"\xff\xfe\x00garbage", b"[1, 2]", b'{"trace": "x"', b"null"):
            r = http.request(method, path, content=body, headers=headers)
            assert 400 <= r.status_code < 500 or r.status_code == 501, (path, body, r.text)
            assert set(r.json()) == {"error_code", "message"}
