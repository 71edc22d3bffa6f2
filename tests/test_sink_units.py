"""The sink's pure parts: configuration, line validation, envelope checks and batch bookkeeping."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import tracehouse.processors as processors
from tracehouse.processors import (
    DEFAULT_GROUP_ID,
    Rejection,
    SinkConfig,
    batch_token,
    check_event,
    validate_line,
)
from tracehouse.processors._batch import BatchLimits, PartitionBatch
from tracehouse.processors._decode import envelope_problem
from tracehouse.schemas import (
    HEADER_FORMAT,
    HEADER_SCHEMA,
    TagSetEvent,
    TraceEvent,
    decode_event,
    example,
    invalid_examples,
)


def test_public_api_is_pinned() -> None:
    assert sorted(processors.__all__) == [
        "DEFAULT_BOOTSTRAP", "DEFAULT_GROUP_ID", "DEFAULT_MAX_EVENT_BYTES", "DEFAULT_REPLAY_GROUP",
        "DEFAULT_STORE_URI", "DeadLetter", "ENV_BOOTSTRAP",
        "ENV_STORE_URI", "ENV_TOPIC_PREFIX", "EpochUnavailable", "HEADER_ORIGIN_LINE", "HEADER_ORIGIN_OFFSET",
        "HEADER_ORIGIN_PARTITION", "HEADER_ORIGIN_TOPIC", "HEADER_REASON", "HEADER_REPLAYED_FROM", "HEADER_TIME",
        "HEADER_TRUNCATED", "LEDGER_TABLE",
        "Ledger", "Rejection", "ReplayPolicy", "ReplayReport", "Sink", "SinkConfig", "SinkStats", "WHOLE_MESSAGE",
        "advance_mark", "batch_token", "check_event", "epoch_scope", "handled_offsets", "read_dlq", "read_epoch",
        "replay_dead_letters", "validate_line",
    ]  # fmt: skip
    for name in processors.__all__:
        assert hasattr(processors, name), name


def test_config_precedence_explicit_over_env_over_default() -> None:
    env = {
        "TRACEHOUSE_KAFKA_BOOTSTRAP": "envhost:1",
        "TRACEHOUSE_TOPIC_PREFIX": "env.",
        "TRACEHOUSE_STORE_URI": "chdb:///env",
    }
    from_env = SinkConfig.resolve(env=env)
    assert (from_env.bootstrap, from_env.topic_prefix, from_env.store_uri) == ("envhost:1", "env.", "chdb:///env")
    explicit = SinkConfig.resolve(bootstrap="x:2", topic_prefix="", store_uri="chdb:///x", env=env)
    assert (explicit.bootstrap, explicit.topic_prefix, explicit.store_uri) == ("x:2", "", "chdb:///x")
    default = SinkConfig.resolve(env={}, max_batch_age_ms=50)
    assert default == SinkConfig(max_batch_age_ms=50)
    assert default.group_id == DEFAULT_GROUP_ID == "tracehouse-sink"
    assert default.source_topic == "tracehouse.traces.v1"
    assert default.dead_letter_topic == "tracehouse.dlq.v1"
    assert SinkConfig(dlq_topic="elsewhere").dead_letter_topic == "elsewhere"


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_batch_rows"):
        SinkConfig(max_batch_rows=0)
    with pytest.raises(ValueError, match="retry_backoff_max_ms"):
        SinkConfig(retry_backoff_ms=500, retry_backoff_max_ms=100)


def test_examples_pass_validation() -> None:
    for name in ("trace", "trace_error", "tag_set", "tag_delete", "assessment"):
        result = validate_line(example(name))
        assert not isinstance(result, Rejection), (name, result)


@pytest.mark.parametrize("case", invalid_examples(), ids=lambda c: str(c["why"]))
def test_schema_violations_are_rejections_not_exceptions(case: dict[str, str]) -> None:
    result = validate_line(case["line"].encode())
    assert isinstance(result, Rejection)
    assert result.reason.startswith(("invalid event", "undecodable event"))


def _trace(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(example("trace"))
    event.update(changes)
    return event


def _spans(*edits: dict[str, Any]) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = orjson.loads(example("trace"))["spans"]
    for i, edit in enumerate(edits):
        spans[i] = {**spans[i], **edit}
    return spans


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        (_trace(spans=_spans({}, {"end_time_ns": 1})), "ends before it starts"),
        (_trace(spans=_spans({}, {"span_id": "a1b2c3d4e5f60718"})), "duplicate span_id"),
        (_trace(spans=_spans({}, {"parent_span_id": "ffffffffffffffff"})), "is not a span of this trace"),
        (_trace(spans=_spans({"parent_span_id": "a1b2c3d4e5f60718"})), "is its own parent"),
        (_trace(spans=_spans({"parent_span_id": "0718a1b2c3d4e5f6"})), "no root span"),
        (_trace(timestamp_ms=2**62), "timestamp_ms"),
        (_trace(spans=_spans({"end_time_ns": 2**63, "start_time_ns": 0})), "out of range"),
        ({**orjson.loads(example("tag_set")), "timestamp_ns": 2**64}, "out of range"),
    ],
)
def test_checks_beyond_the_schema(event: dict[str, Any], needle: str) -> None:
    line = _dumps(event)
    result = validate_line(line)
    assert isinstance(result, Rejection), result
    assert needle in result.reason
    assert result.reason.startswith("invalid event")


def _dumps(event: dict[str, Any]) -> bytes:
    # orjson refuses integers beyond 64 bits; the stdlib writes them as JSON allows.
    import json

    return json.dumps(event).encode()


def test_check_event_accepts_a_trace_without_spans_and_other_types() -> None:
    bare = decode_event(_dumps(_trace(spans=[])))
    assert isinstance(bare, TraceEvent)
    assert check_event(bare) is None
    tag = decode_event(example("tag_set"))
    assert isinstance(tag, TagSetEvent)
    assert check_event(tag) is None


def test_envelope_problems() -> None:
    """Only headers condemn a whole message; NUL bytes and bytes that are not UTF-8 are judged per line."""
    good = example("trace") + b"\n" + example("tag_set")
    assert envelope_problem(good, [(HEADER_FORMAT, b"ndjson"), (HEADER_SCHEMA, b"1")]) is None
    assert envelope_problem('{"ünïcode": 1}'.encode(), None) is None
    assert envelope_problem(b"\x00\x01\x02", None) is None
    assert envelope_problem(b"\xff\xfe{}", None) is None
    assert "format" in (envelope_problem(good, [(HEADER_FORMAT, b"avro")]) or "")
    assert "schema version" in (envelope_problem(good, [(HEADER_SCHEMA, b"2")]) or "")


def test_batch_token_is_a_pure_function_of_the_bounds() -> None:
    assert batch_token("g", "t.traces.v1", 3, 10, 42) == "g:t.traces.v1:3:10:42"
    batch = PartitionBatch(topic="t", partition=1, first_offset=5, created=0.0)
    batch.note_record(5, 10)
    batch.note_record(6, 10)
    assert batch.token("g") == batch_token("g", "t", 1, 5, 6)


def test_batch_triggers() -> None:
    limits = BatchLimits(max_rows=4, max_bytes=1000, max_age_s=0.5)
    batch = PartitionBatch(topic="t", partition=0, first_offset=0, created=10.0)
    event = decode_event(example("trace"))  # 1 trace + 3 spans + 2 tags = 6 rows
    batch.add_event(event)
    batch.note_record(0, 100)
    assert batch.full(limits)
    assert batch.due_at(limits) == pytest.approx(10.5)
    assert batch.events == 1
    assert dict(batch.tables()) == {"traces": 1, "spans": 3, "trace_tags": 2}

    replay = PartitionBatch(topic="t", partition=0, first_offset=0, created=10.0, bound=3)
    replay.add_event(event)
    replay.note_record(0, 10_000)
    assert not replay.full(limits), "a replayed batch ignores size triggers until its bound"
    assert replay.due_at(limits) is None, "and the age trigger"
    assert not replay.complete
    replay.note_record(3, 1)
    assert replay.full(limits)
    assert replay.complete


def test_failed_add_leaves_the_batch_unchanged() -> None:
    batch = PartitionBatch(topic="t", partition=0, first_offset=0, created=0.0)
    batch.add_event(decode_event(example("trace")))
    before = {t: list(r) for t, r in batch.rows.rows.items()}
    # An attribute value orjson cannot encode (an integer beyond 64 bits) fails mid-trace.
    poisoned = _trace(
        trace_id="tr-" + "1" * 32,
        spans=_spans({}, {}, {"attributes": {"big": 2**70}}),
    )
    with pytest.raises(TypeError):
        batch.add_event(decode_event(_dumps(poisoned)))
    assert {t: list(r) for t, r in batch.rows.rows.items()} == before
    assert batch.events == 1


def test_every_count_the_sink_steps_make_is_a_stat() -> None:
    """The steps count into ``SinkState.counts`` by name: a misspelt name would count nowhere."""
    import re
    from pathlib import Path

    from tracehouse.processors import SinkStats, _state

    source = "".join(p.read_text() for p in Path(_state.__file__).parent.glob("_*.py"))
    named = set(re.findall(r"counts\[\"(\w+)\"\]", source))
    assert named
    assert named <= set(_state.COUNTED)
    assert set(_state.COUNTED) <= set(SinkStats.__dataclass_fields__)
