"""Tags, feedback and the misuse errors (in-memory exporter)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

import tracehouse
from tracehouse.producers.testing import InMemoryExporter, capture_events
from tracehouse.schemas import IMMUTABLE_TAGS, AssessmentEvent, TagDeleteEvent, TagSetEvent, decode_event


@pytest.fixture
def events() -> Iterator[InMemoryExporter]:
    with capture_events() as exporter:
        yield exporter


def finished_trace_id() -> str:
    with tracehouse.start_span("done") as span:
        pass
    return span.trace_id


def test_tags_on_an_active_trace_stay_in_memory(events: InMemoryExporter) -> None:
    with tracehouse.start_span("s") as span:
        tracehouse.set_trace_tag(span.trace_id, "reviewed", "yes")
        tracehouse.set_trace_tag(span.trace_id, "temp", "1")
        tracehouse.delete_trace_tag(span.trace_id, "temp")
        assert events.events == []
    (trace,) = events.events
    assert trace["tags"] == {"reviewed": "yes", "mlflow.traceName": "s"}


def test_tags_on_a_logged_trace_are_events(events: InMemoryExporter) -> None:
    trace_id = finished_trace_id()
    events.clear()
    tracehouse.set_trace_tag(trace_id, "reviewed", "yes")
    tracehouse.delete_trace_tag(trace_id, "reviewed")
    set_event, delete_event = events.events
    assert set_event["type"] == "tag_set"
    assert delete_event["type"] == "tag_delete"
    decoded_set, decoded_delete = events.decoded()
    assert isinstance(decoded_set, TagSetEvent)
    assert (decoded_set.trace_id, decoded_set.key, decoded_set.value) == (trace_id, "reviewed", "yes")
    assert isinstance(decoded_delete, TagDeleteEvent)
    assert decoded_delete.timestamp_ns >= decoded_set.timestamp_ns


@pytest.mark.parametrize("key", sorted(IMMUTABLE_TAGS))
def test_immutable_tags_raise(events: InMemoryExporter, key: str) -> None:
    trace_id = finished_trace_id()
    with pytest.raises(tracehouse.ImmutableMetadataError, match="immutable") as err:
        tracehouse.set_trace_tag(trace_id, key, "x")
    assert "mutable" in str(err.value)
    with pytest.raises(tracehouse.ImmutableMetadataError):
        tracehouse.delete_trace_tag(trace_id, key)


@pytest.mark.parametrize("key", ["mlflow.trace.user", "mlflow.trace.session", "mlflow.traceInputs"])
def test_metadata_keys_raise_and_explain(events: InMemoryExporter, key: str) -> None:
    trace_id = finished_trace_id()
    events.clear()
    with pytest.raises(tracehouse.ImmutableMetadataError) as err:
        tracehouse.set_trace_tag(trace_id, key, "someone-else")
    message = str(err.value)
    assert "metadata" in message
    assert "immutable" in message
    assert "tags are mutable" in message
    assert "update_current_trace" in message
    assert isinstance(err.value, ValueError)
    with tracehouse.start_span("active") as span, pytest.raises(tracehouse.ImmutableMetadataError):
        tracehouse.set_trace_tag(span.trace_id, key, "x")
    assert events.of_type("tag_set") == []


@pytest.mark.parametrize(
    ("trace_id", "key", "value"),
    [
        ("tr-123", "k", "v"),
        ("TR-" + "a" * 32, "k", "v"),
        ("tr-" + "a" * 32, "", "v"),
        ("tr-" + "a" * 32, "k" * 251, "v"),
        ("tr-" + "a" * 32, "k", "v" * 8001),
    ],
)
def test_malformed_tag_calls_raise_value_error(
    events: InMemoryExporter, trace_id: str, key: str, value: str
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by argument
        tracehouse.set_trace_tag(trace_id, key, value)
    assert events.events == []


def test_log_feedback_defaults(events: InMemoryExporter) -> None:
    trace_id = finished_trace_id()
    events.clear()
    assessment_id = tracehouse.log_feedback(
        trace_id=trace_id, name="thumbs", value=True, rationale="looks right"
    )
    assert assessment_id.startswith("a-")
    assert len(assessment_id) == 34
    (event,) = events.events
    assert event["source"] == {"source_type": "CODE", "source_id": "default"}
    assert event["kind"] == "feedback"
    (decoded,) = events.decoded()
    assert isinstance(decoded, AssessmentEvent)
    assert decoded.assessment_id == assessment_id
    assert decoded.value is True
    assert decoded.rationale == "looks right"
    assert decoded.session_id is None


@pytest.mark.parametrize(
    "source",
    [
        tracehouse.AssessmentSource("HUMAN", "user-789"),
        {"source_type": "HUMAN", "source_id": "user-789"},
        tracehouse.AssessmentSource(source_type="human", source_id="user-789"),
    ],
)
def test_log_feedback_sources(events: InMemoryExporter, source: Any) -> None:
    trace_id = finished_trace_id()
    events.clear()
    tracehouse.log_feedback(
        trace_id, name="score", value={"score": 0.9}, source=source, session_id="s-1", metadata={"n": 1}
    )
    (event,) = events.events
    assert event["source"] == {"source_type": "HUMAN", "source_id": "user-789"}
    assert event["session_id"] == "s-1"
    assert event["metadata"] == {"n": "1"}
    decode_event(orjson.dumps(event))


def test_feedback_on_an_active_trace_takes_its_session(events: InMemoryExporter) -> None:
    with tracehouse.start_span("s") as span:
        tracehouse.update_current_trace(metadata={"gen_ai.conversation.id": "conv-9"})
        tracehouse.log_feedback(span.trace_id, value=1)
    assessment = events.of_type("assessment")[0]
    assert assessment["session_id"] == "conv-9"
    assert assessment["name"] == "feedback"


def test_log_expectation(events: InMemoryExporter) -> None:
    trace_id = finished_trace_id()
    events.clear()
    tracehouse.log_expectation(trace_id, name="expected", value="FEEDBACK ME")
    (event,) = events.events
    assert event["kind"] == "expectation"
    assert event["source"] == {"source_type": "HUMAN", "source_id": "default"}
    decode_event(orjson.dumps(event))


def test_malformed_feedback_raises(events: InMemoryExporter) -> None:
    trace_id = finished_trace_id()
    with pytest.raises(ValueError, match="source_type"):
        tracehouse.log_feedback(trace_id, value=1, source={"source_type": "ROBOT"})
    with pytest.raises(TypeError):
        tracehouse.log_feedback(trace_id, value=1, source=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a trace id"):
        tracehouse.log_feedback("nope", value=1)
    with pytest.raises(ValueError, match="name"):
        tracehouse.log_feedback(trace_id, name="", value=1)


def test_calls_in_disabled_mode_validate_but_publish_nothing() -> None:
    exporter = InMemoryExporter()
    tracehouse.configure(enabled=False, exporter=exporter)
    try:
        trace_id = "tr-" + "0" * 32
        tracehouse.set_trace_tag(trace_id, "k", "v")
        assert tracehouse.log_feedback(trace_id, value=1).startswith("a-")
        with pytest.raises(tracehouse.ImmutableMetadataError):
            tracehouse.set_trace_tag(trace_id, "mlflow.user", "v")
        assert exporter.events == []
    finally:
        tracehouse.shutdown()
