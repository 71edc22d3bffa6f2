"""One partitioner: the SDK, the ingest gateway and the sessionizer key every event the same way, and
one envelope packer keeps every message under one limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.gateway import event_key
from tracehouse.processors.sessions import Sessionizer, SessionizerConfig
from tracehouse.producers._envelopes import build_batch, encode_item
from tracehouse.schemas import (
    AssessmentEvent,
    Span,
    SpansEvent,
    TagDeleteEvent,
    TagSetEvent,
    TraceEvent,
    encode_event,
    split_envelope,
)
from tracehouse.schemas.kafka import MAX_ENVELOPE_BYTES, pack, partition_for, partition_key

ids = st.integers(min_value=0, max_value=2**128 - 1).map(lambda i: f"tr-{i:032x}")
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
maybe = st.none() | names
IDENTITY_KEYS = ("mlflow.trace.user", "user.id", "mlflow.trace.session", "session.id", "gen_ai.conversation.id")


@st.composite
def identity(draw: st.DrawFn) -> dict[str, str]:
    return {k: draw(names) for k in IDENTITY_KEYS if draw(st.booleans())}


@st.composite
def trace_events(draw: st.DrawFn) -> TraceEvent:
    root_attrs = draw(identity())
    spans = [Span(span_id="a" * 16, name="root", start_time_ns=1, end_time_ns=2, attributes=root_attrs)]
    return TraceEvent(trace_id=draw(ids), timestamp_ms=1, execution_time_ms=1, state="OK",
                      metadata=draw(identity()), spans=spans if draw(st.booleans()) else [])  # fmt: skip


@st.composite
def other_events(draw: st.DrawFn) -> Any:
    trace_id = draw(ids)
    kind = draw(st.sampled_from(["spans", "assessment", "tag_set", "tag_delete"]))
    if kind == "spans":
        span = Span(span_id="b" * 16, name="s", start_time_ns=1, end_time_ns=2)
        return SpansEvent(trace_id=trace_id, spans=[span], user_id=draw(maybe) or "", session_id=draw(maybe) or "")
    if kind == "assessment":
        return AssessmentEvent(assessment_id="a-" + "c" * 32, trace_id=trace_id, name="thumbs", kind="feedback",
                               value=True, create_time_ms=1, session_id=draw(maybe))  # fmt: skip
    if kind == "tag_set":
        return TagSetEvent(trace_id=trace_id, key="k", value="v", timestamp_ns=1)
    return TagDeleteEvent(trace_id=trace_id, key="k", timestamp_ns=1)


@settings(max_examples=400, deadline=None)
@given(event=trace_events() | other_events())
def test_the_sdk_and_the_gateway_give_every_event_the_same_key(event: Any) -> None:
    wire = orjson.loads(encode_event(event))  # the SDK builds and keys plain dicts of this shape
    encoded = encode_item(wire)
    assert encoded is not None
    sdk_key = encoded[1].decode()
    assert sdk_key == event_key(event) == partition_key(event) == partition_key(wire)
    partitions = list(range(12))
    assert partition_for(sdk_key.encode(), partitions) == partition_for(event_key(event).encode(), partitions)


def test_a_session_keeps_its_partition_whoever_publishes() -> None:
    session = {"mlflow.trace.session": "session-42", "mlflow.trace.user": "u"}
    trace = TraceEvent(trace_id="tr-" + "1" * 32, timestamp_ms=1, execution_time_ms=1, state="OK", metadata=session)
    spans = SpansEvent(trace_id=trace.trace_id, spans=[Span(span_id="d" * 16, name="s", start_time_ns=1,
                                                            end_time_ns=2)], session_id="session-42")  # fmt: skip
    feedback = AssessmentEvent(assessment_id="a-" + "e" * 32, trace_id=trace.trace_id, name="n", kind="feedback",
                               value=1, create_time_ms=1, session_id="session-42")  # fmt: skip
    assert {event_key(trace), event_key(spans), event_key(feedback)} == {"session-42"}


def test_user_facts_go_to_their_users_partition(tmp_path: Path) -> None:
    w = Sessionizer(SessionizerConfig(datadir=str(tmp_path), rollup_partitions=5))
    lines = [
        encode_event(TraceEvent(trace_id=f"tr-{i:032x}", timestamp_ms=1_795_000_000_000 + i, execution_time_ms=1,
                                state="OK", metadata={"mlflow.trace.user": f"user-{i % 7}"}))
        for i in range(40)
    ]
    w.fold(0, lines, offset=0)
    placed = 0
    for target, facts in w.folder.parts[0].outbox.items():
        for raw in facts:
            fact = orjson.loads(raw)
            assert target == partition_for(partition_key(fact).encode(), range(5))
            placed += 1
    assert placed == 40


def test_one_envelope_limit_for_every_producer() -> None:
    big = [(0, b"k", b"x" * 300_000) for _ in range(7)]
    envelopes = pack(big)
    assert all(len(e.value) <= MAX_ENVELOPE_BYTES for e in envelopes)
    assert sum(e.count for e in envelopes) == 7
    events = [{"type": "tag_set", "trace_id": f"tr-{i:032x}", "key": "k", "value": "v" * 7000, "timestamp_ns": 1}
              for i in range(400)]  # fmt: skip
    batch = build_batch(events, [0, 1, 2], MAX_ENVELOPE_BYTES)
    assert batch.failed == 0
    assert all(len(e.value) <= MAX_ENVELOPE_BYTES for e in batch.envelopes)
    assert sum(len(list(split_envelope(e.value))) for e in batch.envelopes) == 400
    lines = [(3, None, b"y" * 10) for _ in range(25)]
    assert [e.count for e in pack(lines, max_lines=10)] == [10, 10, 5]
