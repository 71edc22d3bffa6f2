"""Compile parsed filter comparisons into parameterised ClickHouse predicates over ``traces AS t``.

Semantics (see ``docs/query.md``):

* attributes are columns of ``traces``: ``status`` is ``state``, ``request_id`` is ``trace_id``,
  ``end_time_ms`` is ``timestamp_ms + execution_time_ms``;
* ``tag.<k>`` reads the *current* tags (``trace_tags FINAL``, deleted tags excluded); ``!=``, LIKE ...
  need the tag to exist, ``IS NULL`` means the trace has no such tag;
* ``metadata.<k>`` reads ``traces.metadata``; ``mlflow.trace.user`` / ``mlflow.trace.session`` read the
  promoted ``user_id`` / ``session_id`` columns (identity resolved from metadata and the root span's
  ``user.id`` / ``session.id`` ..., exactly what the returned ``TraceInfo.trace_metadata`` shows);
* ``span.*`` matches when *any* span of the trace matches; ``span.attributes.<a>`` compares the
  attribute's text (a JSON string attribute unquoted, anything else as JSON), ``span.content`` (and
  ``trace.text``) the span's name, type, status message, ``key: json`` attribute lines and events JSON;
* ``feedback.<n>`` / ``expectation.<n>`` match when *any* valid, not deleted assessment of that kind
  and name matches; strings compare ``value_text`` (strings unquoted, other JSON as text, so
  ``'true'`` matches boolean ``true``), ``> >= < <=`` compare ``toFloat64OrNull(value_text)``;
  ``IS NULL`` means no such assessment;
* ``prompt = 'name/version'`` matches an entry of the JSON list in tag ``mlflow.linkedPrompts``;
* ``issue.id = 'x'`` matches tag ``mlflow.issue.id`` or metadata ``mlflow.issue.id`` equal to ``x``;
* LIKE is case-sensitive (``%``, ``_``, ``\\`` escapes), ILIKE case-insensitive, RLIKE is an RE2
  regular expression searched anywhere in the value (ClickHouse ``match``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tracehouse.schemas import TRACE_SESSION, TRACE_USER
from tracehouse.schemas.errors import InvalidFilterError

from ._filter import Comparison, Value, parse_filter
from ._grammar import ISSUE_ID_KEY, LINKED_PROMPTS_TAG, Entity
from ._params import Params

#: Attribute keys → SQL over ``traces AS t``, and their ClickHouse type.
ATTRIBUTE_SQL: Final[dict[str, tuple[str, str]]] = {
    "timestamp_ms": ("t.timestamp_ms", "Int64"),
    "execution_time_ms": ("t.execution_time_ms", "Int64"),
    "end_time_ms": ("(t.timestamp_ms + t.execution_time_ms)", "Int64"),
    "status": ("t.state", "String"),
    "request_id": ("t.trace_id", "String"),
    "client_request_id": ("t.client_request_id", "String"),
    "experiment_id": ("t.experiment_id", "String"),
}

#: Metadata keys served by a promoted identity column.
IDENTITY_COLUMNS: Final[dict[str, str]] = {TRACE_USER: "t.user_id", TRACE_SESSION: "t.session_id"}

#: The searchable text of a span row (``span.content`` / ``trace.text``).
SPAN_CONTENT_SQL: Final = (
    "concat(name, '\\n', span_type, '\\n', status_message, '\\n', "
    "arrayStringConcat(arrayMap((ak, av) -> concat(ak, ': ', av), mapKeys(attributes), "
    "mapValues(attributes)), '\\n'), '\\n', events)"
)


def string_predicate(expr: str, comparator: str, value: Value, params: Params) -> str:
    """``expr <comparator> value`` for the string comparators of the grammar."""
    if comparator in ("IN", "NOT IN"):
        items = list(value) if isinstance(value, tuple) else [str(value)]
        return f"{expr} {comparator} {params.add(items, 'Array(String)')}"
    if comparator in ("LIKE", "ILIKE"):
        pattern = str(value)
        if (len(pattern) - len(pattern.rstrip("\\"))) % 2:
            raise InvalidFilterError(
                f"Invalid {comparator} pattern {pattern!r}: it ends with an unescaped backslash "
                "(write \\\\ for a literal backslash)",
                token=pattern,
            )
    placeholder = params.add(str(value), "String")
    if comparator == "RLIKE":
        return f"match({expr}, {placeholder})"
    if comparator in ("=", "!=", "LIKE", "ILIKE"):
        return f"{expr} {comparator} {placeholder}"
    raise AssertionError(f"unexpected string comparator {comparator!r}")  # pragma: no cover


def metadata_sql(key: str, params: Params) -> tuple[str, str]:
    """``(present, value)`` SQL for metadata ``key`` of ``traces AS t``."""
    placeholder = params.add(key, "String")
    column = IDENTITY_COLUMNS.get(key)
    if column is not None:
        # The resolved identity is what TraceInfo shows under this key (see module docstring).
        return f"({column} != '' OR mapContains(t.metadata, {placeholder}))", column
    return f"mapContains(t.metadata, {placeholder})", f"t.metadata[{placeholder}]"


def _tag(key: str, comparator: str, value: Value, params: Params) -> str:
    base = f"SELECT trace_id FROM trace_tags FINAL WHERE key = {params.add(key, 'String')} AND is_deleted = 0"
    if comparator == "IS NULL":
        return f"t.trace_id NOT IN ({base})"
    if comparator == "IS NOT NULL":
        return f"t.trace_id IN ({base})"
    return f"t.trace_id IN ({base} AND {string_predicate('value', comparator, value, params)})"


def _metadata(key: str, comparator: str, value: Value, params: Params) -> str:
    present, expr = metadata_sql(key, params)
    if comparator == "IS NULL":
        return f"NOT {present}"
    if comparator == "IS NOT NULL":
        return present
    return f"({present} AND {string_predicate(expr, comparator, value, params)})"


def _span_status(value: Value) -> Value:
    """Accept OTel's ``STATUS_CODE_ERROR`` spelling for the stored ``ERROR``."""
    def norm(v: str) -> str:
        return v.removeprefix("STATUS_CODE_")

    if isinstance(value, tuple):
        return tuple(norm(v) for v in value)
    return norm(value) if isinstance(value, str) else value


def _span(c: Comparison, params: Params, experiments: str | None) -> str:
    scope = f"experiment_id IN {experiments} AND " if experiments else ""
    value = c.value
    if c.key == "content":
        predicate = string_predicate(SPAN_CONTENT_SQL, c.comparator, value, params)
    elif c.key == "attributes":
        name = params.add(c.span_attribute or "", "String")
        text = (f"if(startsWith(attributes[{name}], '\"'), JSONExtractString(attributes[{name}]), "
                f"attributes[{name}])")
        compared = string_predicate(text, c.comparator, value, params)
        predicate = f"mapContains(attributes, {name}) AND {compared}"
    else:
        column = {"name": "name", "type": "span_type", "status": "status"}[c.key]
        if c.key == "status" and c.comparator in ("=", "!=", "IN", "NOT IN"):
            value = _span_status(value)
        predicate = string_predicate(column, c.comparator, value, params)
    return f"t.trace_id IN (SELECT trace_id FROM spans FINAL WHERE {scope}{predicate})"


def _assessment(c: Comparison, params: Params) -> str:
    kind = "feedback" if c.entity is Entity.FEEDBACK else "expectation"
    base = (f"SELECT trace_id FROM assessments FINAL WHERE kind = {params.add(kind, 'String')} "
            f"AND name = {params.add(c.key, 'String')} AND valid = 1 AND is_deleted = 0")
    if c.comparator == "IS NULL":
        return f"t.trace_id NOT IN ({base})"
    if c.comparator == "IS NOT NULL":
        return f"t.trace_id IN ({base})"
    if c.comparator in ("<", "<=", ">", ">="):
        number = float(c.value) if isinstance(c.value, int | float) else 0.0
        predicate = f"toFloat64OrNull(value_text) {c.comparator} {params.add(number, 'Float64')}"
    else:
        predicate = string_predicate("value_text", c.comparator, c.value, params)
    return f"t.trace_id IN ({base} AND {predicate})"


def _prompt(value: Value, params: Params) -> str:
    entry = ("concat(JSONExtractString(x, 'name'), '/', if(JSONType(x, 'version') = 'String', "
             "JSONExtractString(x, 'version'), JSONExtractRaw(x, 'version')))")
    return (f"t.trace_id IN (SELECT trace_id FROM trace_tags FINAL WHERE key = "
            f"{params.add(LINKED_PROMPTS_TAG, 'String')} AND is_deleted = 0 AND "
            f"has(arrayMap(x -> {entry}, JSONExtractArrayRaw(value)), {params.add(str(value), 'String')}))")


def _issue(value: Value, params: Params) -> str:
    key = params.add(ISSUE_ID_KEY, "String")
    wanted = params.add(str(value), "String")
    return (f"(t.trace_id IN (SELECT trace_id FROM trace_tags FINAL WHERE key = {key} AND is_deleted = 0 "
            f"AND value = {wanted}) OR (mapContains(t.metadata, {key}) AND t.metadata[{key}] = {wanted}))")


def _attribute(c: Comparison, params: Params) -> str:
    if c.key == "prompt":
        return _prompt(c.value, params)
    expr, ch_type = ATTRIBUTE_SQL[c.key]
    if ch_type == "Int64":
        number = c.value if isinstance(c.value, int | float) else 0
        typed = "Int64" if isinstance(number, int) and -(2**63) <= number < 2**63 else "Float64"
        return f"{expr} {c.comparator} {params.add(number, typed)}"
    return string_predicate(expr, c.comparator, c.value, params)


def compile_comparison(c: Comparison, params: Params, experiments: str | None = None) -> str:
    """One comparison as a predicate over ``traces AS t``.

    ``experiments`` is the placeholder of the experiment-id array the search is scoped to, used to
    prune sub-queries of tables that carry ``experiment_id``.
    """
    if c.entity is Entity.ATTRIBUTE:
        return _attribute(c, params)
    if c.entity is Entity.TAG:
        return _tag(c.key, c.comparator, c.value, params)
    if c.entity is Entity.METADATA:
        return _metadata(c.key, c.comparator, c.value, params)
    if c.entity is Entity.SPAN:
        return _span(c, params, experiments)
    if c.entity in (Entity.FEEDBACK, Entity.EXPECTATION):
        return _assessment(c, params)
    return _issue(c.value, params)


def compile_filter(
    comparisons: Sequence[Comparison], params: Params, experiments: str | None = None
) -> list[str]:
    """Every comparison as a predicate over ``traces AS t``; the caller joins them with AND."""
    return [compile_comparison(c, params, experiments) for c in comparisons]


def filter_to_sql(filter_string: str | None) -> tuple[str, dict[str, object]]:
    """The WHERE condition (over ``traces AS t``) and parameters a filter compiles to (for ``--explain``)."""
    params = Params()
    conditions = compile_filter(parse_filter(filter_string), params)
    return " AND ".join(conditions) or "1", params.values
