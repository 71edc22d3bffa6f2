"""The filter and order_by grammar without a database: accepted forms, canonical ASTs, MLflow's errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.query import (
    Comparison,
    Entity,
    InvalidFilterError,
    InvalidOrderByError,
    InvalidParameterError,
    OrderKey,
    filter_to_sql,
    parse_filter,
    parse_order_by,
)

# Every filter the real MLflow 3.17.2 server accepted in the capture (f_filter_matrix, b8, c6).
MLFLOW_ACCEPTED = [
    "attributes.status = 'ERROR'",
    "attributes.execution_time_ms > 0",
    "attributes.timestamp_ms > 0",
    "attributes.name = 'chat_v2'",
    "attributes.client_request_id = 'req-1'",
    "metadata.`mlflow.trace.user` != 'user-123'",
    "metadata.`mlflow.trace.user` LIKE 'user-%'",
    "metadata.`mlflow.trace.user` ILIKE 'USER-4%'",
    "span.name = 'vector_search'",
    "span.type = 'LLM'",
    "trace.text LIKE '%boom%'",
    "tags.env IS NULL",
    "feedback.thumbs = 'true'",
    "feedback.score > 0.5",
    "expectation.expected = 'FEEDBACK ME'",
    "attributes.status IN ('OK', 'ERROR')",
    "trace.status NOT IN ('OK')",
    "status = 'ERROR'",
    "trace.status = 'IN_PROGRESS'",
    "tags.mlflow.traceName = 'chat'",
    "tag.`mlflow.traceName` = 'chat'",
    "metadata.mlflow.trace.user = 'user-123'",
    'request_metadata.`mlflow.trace.user` = "user-123"',
    "metadata.`mlflow.trace.user` = 'user-123' and metadata.`mlflow.trace.session` = 'session-a'",
    "metadata.`mlflow.trace.user` RLIKE '^user-[0-9]+$'",
    "metadata.`mlflow.trace.user` IS NOT NULL",
    "name LIKE 'chat%'",
    "run_id = 'abc'",
    "request_id = 'tr-0'",
    "trace.request_id IN ('tr-0', 'tr-1')",
    "trace.end_time_ms > 0",
    "timestamp_ms > 0",
    "trace.timestamp > 1700000000000",
    "trace.execution_time >= 0",
    "trace.execution_time_ms > '5'",
    "client_request_id LIKE 'req-%'",
    "span.attributes.k LIKE '%2%'",
    "span.content LIKE '%vector%'",
    "span.status = 'ERROR'",
    "span.name IN ('llm', 'retrieve')",
    "feedback.thumbs IS NOT NULL",
    "feedback.`thumbs` = 'true'",
    "issue.id = 'x'",
    "trace.text ILIKE '%BOOM%'",
    "metadata.`mlflow.trace.user` like 'user-%'",
    "tags.env ilike 'PROD'",
    "status in ('ERROR')",
]


@pytest.mark.parametrize("filter_string", MLFLOW_ACCEPTED)
def test_every_filter_mlflow_accepts_parses(filter_string: str) -> None:
    assert parse_filter(filter_string)


# (filter, exact message or prefix, offending token) — messages as the real server wrote them.
MLFLOW_REJECTED = [
    ("trace.state = 'OK'", "Invalid attribute key 'state' specified. Valid keys are '{", "trace.state"),
    ("trace.trace_id = 'tr-0'", "Invalid attribute key 'trace_id' specified.", "trace.trace_id"),
    ("trace.request_preview LIKE '%hello%'", "Invalid attribute key 'request_preview'",
     "trace.request_preview"),
    ("request_metadata.`mlflow.trace.session` IN ('session-a', 'session-b')",
     "=Expected a quoted string value for request_metadata (e.g. 'my-value'). "
     "Got value ('session-a', 'session-b')",
     "("),
    ("metadata.`mlflow.trace.session` IN ('session-a')",
     "=Expected a quoted string value for request_metadata (e.g. 'my-value'). Got value ('session-a')", "("),
    ("metadata.`mlflow.trace.user` = 5",
     "=Expected a quoted string value for request_metadata (e.g. 'my-value'). Got value 5", "5"),
    ("metadata.`mlflow.trace.user` = 'user-123' OR metadata.`mlflow.trace.user` = 'user-456'",
     "=Invalid clause(s) in filter string: 'OR'", "OR"),
    ("prompt = 'x'", "=Invalid prompts filter value 'x'. Expected format: prompt = \"name/version\"", "'x'"),
    ("assessment.thumbs = 'true'", "Invalid entity type 'assessment'. Valid values are {",
     "assessment.thumbs"),
    ("trace.name IN ('chat', 'chat_v2')", "Invalid comparator 'IN' not one of '{", "IN"),
    ("tags.env IN ('prod')", "Invalid comparator 'IN' not one of '{", "IN"),
    ("(metadata.`mlflow.trace.user` = 'user-123')",
     "=Invalid clause(s) in filter string: '(metadata.`mlflow.trace.user` = 'user-123')'",
     "(metadata.`mlflow.trace.user` = 'user-123')"),
    ("NOT metadata.`mlflow.trace.user` = 'user-123'", "=Invalid clause(s) in filter string: 'NOT'", "NOT"),
    ("span.name like 'vec%'", "span.name comparator 'like' not one of '{", "like"),
]


@pytest.mark.parametrize(("filter_string", "expected", "token"), MLFLOW_REJECTED)
def test_rejections_carry_mlflow_messages_and_the_offending_token(
    filter_string: str, expected: str, token: str
) -> None:
    with pytest.raises(InvalidFilterError) as err:
        parse_filter(filter_string)
    message = str(err.value)
    if expected.startswith("="):
        assert message == expected[1:]
    else:
        assert message.startswith(expected)
    assert err.value.token == token
    assert err.value.position is not None
    assert filter_string[err.value.position :].startswith(token[:1])
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert isinstance(err.value, ValueError)


OTHER_REJECTED = [
    ("a = 'x' OR b = 'y' OR c = 'z'", "Invalid clause(s) in filter string: 'OR', 'OR'"),
    ("status = 'OK' or status = 'ERROR'", "Invalid clause(s) in filter string: 'or'"),
    ("status = 'OK'; status = 'ERROR'", "Search filter contained multiple expression"),
    ("status = 'OK' AND", "expected an identifier"),
    ("status", "expected a comparison operator"),
    ("status =", "expected a value after '='"),
    ("status = 'OK' status = 'ERROR'", "expected 'AND'"),
    ("status = 'OK", "Unterminated quoted string"),
    ("tags.`env = 'x'", "Unterminated quoted identifier"),
    ("status = OK", "Parameter value is either not quoted"),
    ("status = 'OK' & x", "Unexpected character '&'"),
    ("status IN ()", "expected a non-empty list"),
    ("status IN ('OK', 5)", "but got different type in list"),
    ("status IN ('OK'", "unterminated list"),
    ("status IS NULL", "Invalid comparator 'IS NULL'"),
    ("status IN 'OK'", "Expected a list of quoted string values for 'IN'"),
    ("status = ('OK')", "Expected a quoted string value for attributes"),
    ("status > 'OK'", "Invalid comparator '>'"),
    ("status = 5", "attributes support comparison with numeric values"),
    ("timestamp_ms LIKE '5'", "Invalid comparator 'LIKE'"),
    ("timestamp_ms > 'soon'", "Expected numeric value type for numeric attribute: timestamp_ms"),
    ("timestamp_ms IN ('1')", "supports comparison with a list of quoted string values"),
    ("timestamp_ms <> 5", "Invalid comparator '<>'"),
    ("tags.env > 'a'", "Invalid comparator '>'"),
    ("tags.env = 5", "Expected a quoted string value for tag"),
    ("span.name IS NULL", "span.name comparator 'IS NULL'"),
    ("span.name = 5", "Expected a quoted string value for span"),
    ("span.content = 'x'", "span.content comparator '='"),
    ("span.foo = 'x'", "Invalid span attribute 'foo'"),
    ("span.attributes = 'x'", "Span attribute name cannot be empty"),
    ("span.name in ('a')", "span.name comparator 'in'"),
    ("feedback.score > '0.5'", "Expected a numeric value for feedback when using comparator '>'"),
    ("feedback.score = 0.5", "Expected a quoted string value for feedback"),
    ("feedback.score IN ('a')", "Expected a quoted string value for feedback"),
    ("expectation.x NOT IN ('a')", "Expected a quoted string value for expectation"),
    ("issue.name = 'x'", "Invalid issue attribute 'name'"),
    ("issue.id != 'x'", "issue.id comparator '!='"),
    ("prompt != 'a/1'", "Invalid comparator '!='"),
    ("text = 'x'", "Invalid comparator '='"),
    ("TAGS.env = 'x'", "Invalid entity type 'TAGS'"),
    ("`metadata`.user = 'x' AND assessment.x = 'y'", "Invalid entity type 'assessment'"),
    ("tags. = 'x'", "Expected a key after '.'"),
]


@pytest.mark.parametrize(("filter_string", "fragment"), OTHER_REJECTED)
def test_other_rejections_say_what_is_wrong(filter_string: str, fragment: str) -> None:
    with pytest.raises(InvalidFilterError) as err:
        parse_filter(filter_string)
    assert fragment in str(err.value)
    assert err.value.position is not None


def test_syntax_errors_say_where() -> None:
    with pytest.raises(InvalidFilterError) as err:
        parse_filter("status = 'OK' AND tags.env ~ 'x'")
    assert err.value.position == 27
    assert err.value.token == "~"
    assert "at position 27" in str(err.value)


def test_canonical_forms() -> None:
    source = (
        "trace.timestamp > '5' and attributes.execution_time <= 2.5 AND end_time = 7 and name like 'c%' "
        "AND run_id IS NULL AND text ilike '%x%' AND tags.`my key` != \"v\" AND metadata.a.b RLIKE 'x' "
        "AND span.attributes.`llm.model` IN ('a', 'b') AND feedback.`my.score` >= 1 AND "
        "expectation.e is not null AND issue.id = 'I-1' AND prompt = 'qa/3' AND status not in ('OK')"
    )
    c = parse_filter(source)
    assert [replace(x, position=0) for x in c] == [
        Comparison(Entity.ATTRIBUTE, "timestamp_ms", ">", 5),
        Comparison(Entity.ATTRIBUTE, "execution_time_ms", "<=", 2.5),
        Comparison(Entity.ATTRIBUTE, "end_time_ms", "=", 7),
        Comparison(Entity.TAG, "mlflow.traceName", "LIKE", "c%"),
        Comparison(Entity.METADATA, "mlflow.sourceRun", "IS NULL", None),
        Comparison(Entity.SPAN, "content", "ILIKE", "%x%"),
        Comparison(Entity.TAG, "my key", "!=", "v"),
        Comparison(Entity.METADATA, "a.b", "RLIKE", "x"),
        Comparison(Entity.SPAN, "attributes", "IN", ("a", "b"), span_attribute="llm.model"),
        Comparison(Entity.FEEDBACK, "my.score", ">=", 1.0),
        Comparison(Entity.EXPECTATION, "e", "IS NOT NULL", None),
        Comparison(Entity.ISSUE, "id", "=", "I-1"),
        Comparison(Entity.ATTRIBUTE, "prompt", "=", "qa/3"),
        Comparison(Entity.ATTRIBUTE, "status", "NOT IN", ("OK",)),
    ]
    starts = ["trace.timestamp", "attributes.execution", "end_time", "name like", "run_id", "text",
              "tags.`my", "metadata.a", "span.", "feedback", "expectation", "issue", "prompt", "status"]
    assert [x.position for x in c] == [source.index(s) for s in starts]


def test_string_escapes() -> None:
    (c,) = parse_filter(r"tags.k = 'it''s \'q\' \\ \d'")
    assert c.value == "it's 'q' \\ \\d"
    (c,) = parse_filter('tags.k = "say ""hi"""')
    assert c.value == 'say "hi"'
    (c,) = parse_filter("tags.`we``ird.key` = 'x'")
    assert c.key == "we`ird.key"
    (c,) = parse_filter("tags.\"quoted key\" = 'x'")
    assert c.key == "quoted key"
    assert parse_filter("   ") == ()
    assert parse_filter(None) == ()


def test_order_by_parsing_and_tiebreakers() -> None:
    assert parse_order_by(None) == (
        OrderKey(Entity.ATTRIBUTE, "timestamp_ms", False), OrderKey(Entity.ATTRIBUTE, "request_id", True))
    assert parse_order_by(["timestamp ASC"]) == (
        OrderKey(Entity.ATTRIBUTE, "timestamp_ms", True), OrderKey(Entity.ATTRIBUTE, "request_id", True))
    assert parse_order_by(["trace.execution_time desc", "name", "run_id DESC", "tags.env",
                           "metadata.`mlflow.trace.user` ASC", "request_metadata.a.b",
                           "request_id DESC"]) == (
        OrderKey(Entity.ATTRIBUTE, "execution_time_ms", False),
        OrderKey(Entity.TAG, "mlflow.traceName", True),
        OrderKey(Entity.METADATA, "mlflow.sourceRun", False),
        OrderKey(Entity.TAG, "env", True),
        OrderKey(Entity.METADATA, "mlflow.trace.user", True),
        OrderKey(Entity.METADATA, "a.b", True),
        OrderKey(Entity.ATTRIBUTE, "request_id", False),
        OrderKey(Entity.ATTRIBUTE, "timestamp_ms", False),
    )
    for key in ("experiment_id", "status", "end_time", "end_time_ms", "timestamp_ms"):
        assert parse_order_by([key])[0].entity is Entity.ATTRIBUTE


@pytest.mark.parametrize(("clause", "message"), [
    ("state", "Invalid attribute key 'state' specified. Valid keys are '{"),
    ("client_request_id", "Invalid attribute key 'client_request_id' specified."),
    ("timestamp_ms DESC, request_id",
     "=Invalid order_by clause 'timestamp_ms DESC, request_id'. Could not be parsed."),
    ("timestamp_ms sideways", "=Invalid ordering key in order_by clause 'timestamp_ms sideways'."),
    ("timestamp_ms DESC extra", "Could not be parsed."),
    ("", "Could not be parsed."),
    ("span.name", "Invalid order_by entity `span` with key `name`"),
    ("foo.bar", "Invalid entity type 'foo'"),
    ("metadata.`mlflow.trace.tokenUsage`",
     "Ordering by metadata key 'mlflow.trace.tokenUsage' is not supported"),
    ("'unterminated", "Could not be parsed."),
])
def test_order_by_rejections(clause: str, message: str) -> None:
    with pytest.raises(InvalidOrderByError) as err:
        parse_order_by([clause])
    if message.startswith("="):
        assert str(err.value) == message[1:]
    else:
        assert message in str(err.value)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert isinstance(err.value, InvalidParameterError)


_printable = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _backtick(key: str) -> str:
    return "`" + key.replace("`", "``") + "`"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_raises_only_invalid_filter_error(text: str) -> None:
    position: int | None = 0
    try:
        parse_filter(text)
    except InvalidFilterError as exc:
        position = exc.position
    assert position is None or 0 <= position <= len(text)


@settings(max_examples=150, deadline=None)
@given(key=_printable.filter(bool), value=_printable, entity=st.sampled_from(
    ["tags", "metadata", "feedback", "expectation", "span.attributes"]),
    op=st.sampled_from(["=", "!=", "LIKE", "ILIKE", "RLIKE"]))
def test_user_text_never_reaches_sql(key: str, value: str, entity: str, op: str) -> None:
    """Keys and values of any content round-trip through the quoting and become parameters: the SQL
    text is the same as for a harmless key and value."""
    nasty = f"{entity}.{_backtick(key)} {op} {_quote(value)}"
    (c,) = parse_filter(nasty)
    assert c.value == value
    assert (c.span_attribute if entity == "span.attributes" else c.key) == key
    if op in ("LIKE", "ILIKE") and (len(value) - len(value.rstrip("\\"))) % 2:
        # A pattern ending in an unescaped backslash is invalid for ClickHouse: a typed error, not SQL.
        with pytest.raises(InvalidFilterError, match="unescaped backslash"):
            filter_to_sql(nasty)
        return
    sql, params = filter_to_sql(nasty)
    plain_sql, _ = filter_to_sql(f"{entity}.`k` {op} 'v'")
    assert sql == plain_sql
    assert key in params.values()
    assert value in params.values()
