"""The tables of MLflow's trace search grammar: entities, aliases, keys and comparators.

These mirror ``SearchTraceUtils`` of MLflow 3.17 (see ``docs/query.md``); the error messages built
from them render sets the way Python prints them, so they read like the real server's.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Final

from tracehouse.schemas import TRACE_NAME_TAG


class Entity(StrEnum):
    """The canonical entity of a filter comparison or order_by key."""

    ATTRIBUTE = "attribute"
    TAG = "tag"
    METADATA = "request_metadata"
    SPAN = "span"
    FEEDBACK = "feedback"
    EXPECTATION = "expectation"
    ISSUE = "issue"


#: Every spelling of an entity the grammar accepts, and what it means.
ENTITY_ALIASES: Final[dict[str, Entity]] = {
    "attribute": Entity.ATTRIBUTE,
    "attributes": Entity.ATTRIBUTE,
    "trace": Entity.ATTRIBUTE,
    "tag": Entity.TAG,
    "tags": Entity.TAG,
    "request_metadata": Entity.METADATA,
    "metadata": Entity.METADATA,
    "span": Entity.SPAN,
    "feedback": Entity.FEEDBACK,
    "expectation": Entity.EXPECTATION,
    "issue": Entity.ISSUE,
}

NUMERIC_ATTRIBUTES: Final = frozenset(
    {"timestamp_ms", "timestamp", "execution_time_ms", "execution_time", "end_time_ms", "end_time"}
)
FILTER_ATTRIBUTES: Final = frozenset(
    NUMERIC_ATTRIBUTES
    | {"status", "request_id", "client_request_id", "name", "run_id", "prompt", "text"}
)
ORDER_BY_ATTRIBUTES: Final = frozenset(
    NUMERIC_ATTRIBUTES | {"experiment_id", "status", "request_id", "name", "run_id"}
)
#: Attribute keys that take a ``('a', 'b')`` list (then rejected later for name/run_id by the
#: tag/metadata comparator check, exactly as MLflow does).
LIST_ATTRIBUTES: Final = frozenset({"name", "status", "request_id", "run_id", "client_request_id"})

#: Canonical names of the aliased attribute keys.
ATTRIBUTE_ALIASES: Final[dict[str, str]] = {
    "timestamp": "timestamp_ms",
    "execution_time": "execution_time_ms",
    "end_time": "end_time_ms",
}

TRACE_NAME_KEY: Final = TRACE_NAME_TAG
SOURCE_RUN_KEY: Final = "mlflow.sourceRun"
LINKED_PROMPTS_TAG: Final = "mlflow.linkedPrompts"
ISSUE_ID_KEY: Final = "mlflow.issue.id"
#: Metadata keys that order_by refuses (MLflow: token usage and cost are not orderable).
UNORDERABLE_METADATA: Final = frozenset({"mlflow.trace.tokenUsage", "mlflow.trace.cost"})

NUMERIC_COMPARATORS: Final = frozenset({"=", "!=", "<", "<=", ">", ">="})
STRING_ATTRIBUTE_COMPARATORS: Final = frozenset({"=", "!=", "LIKE", "ILIKE", "RLIKE", "IN", "NOT IN"})
KEY_VALUE_COMPARATORS: Final = frozenset({"=", "!=", "LIKE", "ILIKE", "RLIKE", "IS NULL", "IS NOT NULL"})
SPAN_FIELDS: Final = ("name", "type", "status")
SPAN_FIELD_COMPARATORS: Final = STRING_ATTRIBUTE_COMPARATORS
SPAN_CONTENT_COMPARATORS: Final = frozenset({"LIKE", "ILIKE"})
ASSESSMENT_NUMERIC_COMPARATORS: Final = frozenset({">", ">=", "<", "<="})
ASSESSMENT_COMPARATORS: Final = KEY_VALUE_COMPARATORS | ASSESSMENT_NUMERIC_COMPARATORS
ISSUE_COMPARATORS: Final = frozenset({"="})


def py_set(items: Iterable[str]) -> str:
    """Render like Python's ``repr(set)``, but in a stable (sorted) order."""
    return "{" + ", ".join(repr(i) for i in sorted(items)) + "}"


VALID_ENTITIES_TEXT: Final = py_set(ENTITY_ALIASES)
