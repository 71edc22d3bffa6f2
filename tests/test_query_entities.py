"""Trace objects: MLflow's names, MLflow's JSON (checked against captured server output), lossless
round trips, immutable metadata and the DataFrame columns."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.query import (
    DATAFRAME_COLUMNS,
    Assessment,
    AssessmentSource,
    ImmutableMetadataError,
    Span,
    SpanEvent,
    SpanStatusCode,
    Trace,
    TraceData,
    TraceInfo,
    TracePage,
    TraceState,
    TraceStatus,
    traces_to_dataframe,
)

# A TraceInfoV3 as the real MLflow 3.17.2 server returned it from traces/search (scenario c6).
CAPTURED_INFO: dict[str, Any] = {
    "trace_id": "tr-d087230e194c8261da97b1bb55ff071c",
    "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": "0"}},
    "request_time": "2026-11-22T10:31:06.377Z",
    "execution_duration": "0.051s",
    "state": "OK",
    "trace_metadata": {
        "mlflow.trace.session": "session-z",
        "mlflow.trace.user": "user-789",
        "mlflow.trace_schema.version": "3",
        "mlflow.traceInputs": "{\"q\": \"feedback me\"}",
        "mlflow.traceOutputs": "\"FEEDBACK ME\"",
        "mlflow.trace.infoFinalized": "true",
    },
    "assessments": [
        {"assessment_id": "a-0c4aeccc728b419597a8a028b894213a", "assessment_name": "thumbs",
         "trace_id": "tr-d087230e194c8261da97b1bb55ff071c",
         "source": {"source_type": "HUMAN", "source_id": "user-789"},
         "create_time": "2026-11-22T10:31:07.723Z", "last_update_time": "2026-11-22T10:31:07.723Z",
         "feedback": {"value": True}, "rationale": "looks right", "valid": True},
        {"assessment_id": "a-4075a1e1dc2840e7be333f523afd8f83", "assessment_name": "score",
         "trace_id": "tr-d087230e194c8261da97b1bb55ff071c",
         "source": {"source_type": "CODE", "source_id": "default"},
         "create_time": "2026-11-22T10:31:07.739Z", "last_update_time": "2026-11-22T10:31:07.739Z",
         "feedback": {"value": 0.8}, "valid": True},
        {"assessment_id": "a-81265e12ccce41d09f9c75e3875f1eb2", "assessment_name": "expected",
         "trace_id": "tr-d087230e194c8261da97b1bb55ff071c",
         "source": {"source_type": "HUMAN", "source_id": "default"},
         "create_time": "2026-11-22T10:31:07.752Z", "last_update_time": "2026-11-22T10:31:07.752Z",
         "expectation": {"value": "FEEDBACK ME"}, "valid": True},
    ],
    "tags": {"mlflow.traceName": "answer", "label": "good", "mlflow.trace.spansLocation": "TRACKING_STORE"},
    "request_preview": "{\"q\": \"feedback me\"}",
    "response_preview": "\"FEEDBACK ME\"",
}

# An error span as the real server returned it from traces/batchGet (scenario a_default_sync).
CAPTURED_SPAN: dict[str, Any] = {
    "trace_id": "VoSdHz9SrW0j6zJWZJqzZA==",
    "span_id": "2qSZlnhY7Ww=",
    "name": "chat",
    "start_time_unix_nano": 1795343366222834030,
    "end_time_unix_nano": 1795343366227536608,
    "attributes": [
        {"key": "mlflow.traceRequestId", "value": {"string_value": "tr-56849d1f3f52ad6d23eb3256649ab364"}},
        {"key": "mlflow.spanType", "value": {"string_value": "UNKNOWN"}},
        {"key": "mlflow.spanInputs", "value": {"kvlist_value": {"values": [
            {"key": "message", "value": {"string_value": "boom please"}},
            {"key": "session_id", "value": {"string_value": "session-c"}}]}}},
        {"key": "mlflow.spanOutputs", "value": {"array_value": {"values": [
            {"string_value": "doc"}, {"int_value": 2}, {"bool_value": True}, {"double_value": 0.5}]}}},
        {"key": "mlflow.spanLogLevel", "value": {"int_value": 40}},
    ],
    "events": [{"time_unix_nano": 1795343366227440384, "name": "exception", "attributes": [
        {"key": "exception.message", "value": {"string_value": "simulated LLM failure"}},
        {"key": "exception.type", "value": {"string_value": "ValueError"}}]}],
    "status": {"message": "ValueError: simulated LLM failure", "code": "STATUS_CODE_ERROR"},
}
CAPTURED_CHILD: dict[str, Any] = {
    "trace_id": "VoSdHz9SrW0j6zJWZJqzZA==", "span_id": "FqqiILQEfLc=", "parent_span_id": "2qSZlnhY7Ww=",
    "name": "retrieve", "start_time_unix_nano": 1795343366224619478,
    "end_time_unix_nano": 1795343366225095991,
    "attributes": [
        {"key": "mlflow.traceRequestId", "value": {"string_value": "tr-56849d1f3f52ad6d23eb3256649ab364"}},
        {"key": "mlflow.spanType", "value": {"string_value": "RETRIEVER"}}],
    "status": {"code": "STATUS_CODE_OK"},
}


def test_captured_trace_info_round_trips_byte_for_byte() -> None:
    info = TraceInfo.from_dict(CAPTURED_INFO)
    assert info.to_dict() == CAPTURED_INFO
    assert info.trace_id == info.request_id == "tr-d087230e194c8261da97b1bb55ff071c"
    assert info.experiment_id == "0"
    assert info.timestamp_ms == info.timestamp == info.request_time == 1795343466377
    assert info.execution_time_ms == info.execution_duration == 51
    assert info.end_time_ms == 1795343466428
    assert info.state == "OK"
    assert info.status is TraceState.OK
    assert info.state.value == "OK"
    assert TraceStatus.OK is TraceState.OK
    assert info.metadata is info.trace_metadata is info.request_metadata
    assert info.user_id == "user-789"
    assert info.session_id == "session-z"
    assert info.tags["label"] == "good"
    thumbs, score, expected = info.assessments
    assert (thumbs.name, thumbs.value, thumbs.kind, thumbs.source.source_type, thumbs.rationale) == (
        "thumbs", True, "feedback", "HUMAN", "looks right")
    assert thumbs.create_time_ms == 1795343467723
    assert thumbs.valid
    assert score.value == 0.8
    assert score.feedback == {"value": 0.8}
    assert score.expectation is None
    assert expected.kind == "expectation"
    assert expected.assessment_name == "expected"


def test_captured_spans_round_trip_and_decode() -> None:
    root = Span.from_dict(CAPTURED_SPAN)
    child = Span.from_dict(CAPTURED_CHILD)
    assert root.to_dict() == CAPTURED_SPAN
    assert child.to_dict() == CAPTURED_CHILD
    assert root.trace_id == root.request_id == "tr-56849d1f3f52ad6d23eb3256649ab364"
    assert root.span_id == "da a4 99 96 78 58 ed 6c".replace(" ", "")
    assert root.parent_id is None
    assert child.parent_id == root.span_id
    assert root.status == "ERROR"
    assert root.status is SpanStatusCode.ERROR
    assert root.status_message == "ValueError: simulated LLM failure"
    assert root.inputs == {"message": "boom please", "session_id": "session-c"}
    assert root.outputs == ["doc", 2, True, 0.5]
    assert root.attributes["mlflow.spanLogLevel"] == 40
    assert root.events[0].name == "exception"
    assert root.events[0].attributes["exception.type"] == "ValueError"
    assert child.span_type == "RETRIEVER"
    assert root.span_type == "UNKNOWN"
    trace = Trace(TraceInfo("tr-56849d1f3f52ad6d23eb3256649ab364"), TraceData([root, child]))
    assert trace.data.request == '{"message":"boom please","session_id":"session-c"}'
    assert trace.search_spans(span_type="RETRIEVER") == [child]
    assert Trace.from_dict(trace.to_v3_dict()) == trace


def test_span_from_other_dialects() -> None:
    hex_form = Span.from_dict({
        "traceId": "56849d1f3f52ad6d23eb3256649ab364", "spanId": "daa4999678 58ed6c".replace(" ", ""),
        "parentSpanId": "16aaa220b404b7cb", "name": "x", "startTimeUnixNano": "5", "endTimeUnixNano": "9",
        "attributes": [{"key": "k", "value": {"intValue": "7"}}, {"key": "l", "value": {"arrayValue": {}}}],
        "status": {"code": 2},
    })
    assert hex_form.trace_id == "tr-56849d1f3f52ad6d23eb3256649ab364"
    assert hex_form.parent_id == "16aaa220b404b7cb"
    assert hex_form.start_time_ns == 5
    assert hex_form.attributes["k"] == 7
    assert hex_form.attributes["l"] == []
    assert hex_form.status == "ERROR"
    artifact = Span.from_dict({
        "trace_id": "0IcjDhlMgmHal7G7Vf8HHA==", "span_id": "JGhS6k3iMeI=", "parent_span_id": None,
        "name": "answer", "start_time_unix_nano": 1, "end_time_unix_nano": 2, "events": [],
        "status": {"code": "STATUS_CODE_OK", "message": ""},
        "attributes": {"mlflow.traceRequestId": "\"tr-d087230e194c8261da97b1bb55ff071c\"",
                       "mlflow.spanType": "\"LLM\"", "mlflow.spanInputs": "{\"q\": \"feedback me\"}"},
    })
    assert artifact.trace_id == "tr-d087230e194c8261da97b1bb55ff071c"
    assert artifact.span_type == "LLM"
    assert artifact.inputs == {"q": "feedback me"}
    assert artifact.parent_id is None


def test_metadata_is_read_only() -> None:
    info = TraceInfo("tr-1", trace_metadata={"mlflow.trace.user": "u"})
    with pytest.raises(ImmutableMetadataError, match="immutable"):
        info.metadata["mlflow.trace.user"] = "other"  # type: ignore[index]
    for mutate in ("update", "pop", "clear", "setdefault", "popitem"):
        with pytest.raises(ImmutableMetadataError):
            getattr(info.trace_metadata, mutate)("k")
    with pytest.raises(ImmutableMetadataError):
        del info.request_metadata["mlflow.trace.user"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        info.trace_metadata = {}  # type: ignore[misc]
    assert info.metadata == {"mlflow.trace.user": "u"}
    copied = info.metadata.copy()  # type: ignore[attr-defined]
    copied["x"] = "y"
    assert "x" not in info.metadata
    assert pickle.loads(pickle.dumps(info)) == info
    assert copy.deepcopy(info) == info


def test_token_usage_and_defaults() -> None:
    info = TraceInfo("tr-1", trace_metadata={
        "mlflow.trace.tokenUsage": '{"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}',
        "user.id": "alias-user"})
    assert info.token_usage == {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
    assert info.user_id == "alias-user"
    assert info.session_id is None
    assert TraceInfo("tr-2").token_usage is None
    assert TraceInfo("tr-3", state="error").state is TraceState.ERROR  # type: ignore[arg-type]
    d = TraceInfo("tr-4", request_time=1000, execution_duration=2500).to_dict()
    assert d["request_time"] == "1970-01-01T00:00:01Z"
    assert d["execution_duration"] == "2.500s"
    assert "client_request_id" not in d
    assert "response_preview" not in d
    assert "assessments" not in d


def test_v2_and_camel_case_info() -> None:
    info = TraceInfo.from_dict({"requestId": "tr-9", "requestTime": "2026-01-01T00:00:00.5+01:00",
                                "executionDuration": "1.25s", "state": "IN_PROGRESS",
                                "traceMetadata": {"a": "b"}, "clientRequestId": "c"})
    assert info.trace_id == "tr-9"
    assert info.request_time == 1767222000500
    assert info.execution_duration == 1250
    assert info.state is TraceState.IN_PROGRESS
    assert info.metadata == {"a": "b"}
    assert info.client_request_id == "c"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
hex16 = st.text("0123456789abcdef", min_size=16, max_size=16)
hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)
names = st.text(max_size=12)
millis = st.integers(0, 4_102_444_800_000)

assessments = st.builds(
    Assessment, name=names, value=json_values, kind=st.sampled_from(["feedback", "expectation"]),
    trace_id=st.none() | names, assessment_id=st.none() | names,
    source=st.builds(AssessmentSource, st.sampled_from(["HUMAN", "CODE", "LLM_JUDGE"]), names),
    rationale=st.none() | names, create_time_ms=millis, last_update_time_ms=st.none() | millis,
    valid=st.booleans(), metadata=st.dictionaries(names, names, max_size=2),
)
infos = st.builds(
    TraceInfo, trace_id=hex32.map(lambda h: "tr-" + h), experiment_id=names.filter(bool),
    request_time=millis, execution_duration=st.none() | st.integers(0, 10**9),
    state=st.sampled_from(list(TraceState)), client_request_id=st.none() | names,
    request_preview=st.none() | names, response_preview=st.none() | names,
    trace_metadata=st.dictionaries(names, names, max_size=3), tags=st.dictionaries(names, names, max_size=3),
    assessments=st.lists(assessments, max_size=2),
)
spans = st.builds(
    Span, span_id=hex16, trace_id=hex32.map(lambda h: "tr-" + h), name=names,
    start_time_ns=st.integers(0, 2**62), end_time_ns=st.integers(0, 2**62), parent_id=st.none() | hex16,
    span_type=st.sampled_from(["", "LLM", "TOOL", "CHAIN"]), status=st.sampled_from(list(SpanStatusCode)),
    status_message=names, attributes=st.dictionaries(names, json_values, max_size=4),
    events=st.lists(st.builds(SpanEvent, names, st.integers(0, 2**62),
                              st.dictionaries(names, json_values, max_size=2)), max_size=2),
)


@settings(max_examples=150, deadline=None)
@given(info=infos, span_list=st.lists(spans, max_size=3))
def test_round_trips_are_lossless(info: TraceInfo, span_list: list[Span]) -> None:
    trace = Trace(info, TraceData(span_list))
    assert TraceInfo.from_dict(info.to_dict()) == info
    assert Trace.from_dict(trace.to_dict()) == trace
    assert Trace.from_json(trace.to_json()) == trace
    assert Trace.from_dict(trace.to_v3_dict()) == trace
    for a in info.assessments:
        assert Assessment.from_dict(a.to_dict()) == a
    for span in span_list:
        assert Span.from_dict(span.to_artifact_dict()) == span
    page = TracePage([Trace(info)], "tok")
    assert TracePage.from_dict(page.to_dict()) == page


def test_dataframe_has_mlflow_columns() -> None:
    root = Span.from_dict(CAPTURED_SPAN)
    trace = Trace(TraceInfo.from_dict(CAPTURED_INFO), TraceData([root]))
    df = traces_to_dataframe([trace, Trace(TraceInfo("tr-2", state=TraceState.ERROR))])
    assert tuple(df.columns) == DATAFRAME_COLUMNS == (
        "trace_id", "trace", "client_request_id", "state", "request_time", "execution_duration",
        "request", "response", "trace_metadata", "tags", "spans", "assessments")
    row = df.iloc[0]
    assert row["trace_id"] == trace.info.trace_id
    assert Trace.from_json(row["trace"]) == trace
    assert row["state"] == "OK"
    assert row["request_time"] == 1795343466377
    assert row["execution_duration"] == 51
    assert row["request"] == {"message": "boom please", "session_id": "session-c"}
    assert row["response"] == ["doc", 2, True, 0.5]
    assert row["trace_metadata"]["mlflow.trace.user"] == "user-789"
    assert row["spans"] == [root.to_dict()]
    assert len(row["assessments"]) == 3
    assert df.iloc[1]["request"] is None
    assert df.iloc[1]["state"] == "ERROR"
    empty = traces_to_dataframe([])
    assert list(empty.columns) == list(DATAFRAME_COLUMNS)
    assert len(empty) == 0


def test_public_api_is_exported() -> None:
    import tracehouse.query as q

    mine = {
        "Assessment", "AssessmentSource", "Comparison", "DATAFRAME_COLUMNS", "Entity",
        "INVALID_PARAMETER_VALUE",
        "ImmutableMetadataError", "InvalidFilterError", "InvalidOrderByError", "InvalidPageTokenError",
        "InvalidParameterError", "MAX_PAGE_SIZE", "OrderKey", "SessionTimeline", "SessionTurn", "Span",
        "SpanEvent", "SpanStatusCode", "Trace", "TraceData", "TraceInfo", "TraceMetadata", "TracePage",
        "TraceReader", "TraceState", "TraceStatus", "UserSummary", "collect_traces", "filter_to_sql",
        "parse_filter", "parse_order_by", "session_timeline", "traces_to_dataframe", "user_summary",
    }
    assert mine <= set(q.__all__)
    assert all(hasattr(q, name) for name in q.__all__)
