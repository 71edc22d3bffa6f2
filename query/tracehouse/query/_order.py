"""order_by for trace search: parse MLflow's clauses and turn them into sort columns.

Each clause is ``"<key> [ASC|DESC]"`` (case-insensitive, ASC by default), one key per clause. Keys are
the attributes ``experiment_id``, ``timestamp(_ms)``, ``execution_time(_ms)``, ``end_time(_ms)``,
``status``, ``request_id``, ``name`` (tag ``mlflow.traceName``), ``run_id`` (metadata
``mlflow.sourceRun``), optionally prefixed ``trace.`` / ``attribute.``, plus ``tags.<k>`` and
``metadata.<k>``. The tie-breakers ``timestamp_ms DESC`` and ``request_id ASC`` are appended unless
already present, so the order is total. Traces without the ordered tag or metadata key sort last in
either direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tracehouse.schemas.errors import InvalidFilterError, InvalidOrderByError

from ._compile import ATTRIBUTE_SQL, metadata_sql
from ._grammar import (
    ATTRIBUTE_ALIASES,
    ENTITY_ALIASES,
    ORDER_BY_ATTRIBUTES,
    SOURCE_RUN_KEY,
    TRACE_NAME_KEY,
    UNORDERABLE_METADATA,
    VALID_ENTITIES_TEXT,
    Entity,
    py_set,
)
from ._lexer import tokenize
from ._params import Params


@dataclass(frozen=True, slots=True)
class OrderKey:
    """One resolved order_by key: an attribute, a tag or a metadata key, and its direction."""

    entity: Entity
    key: str
    ascending: bool = True


@dataclass(frozen=True, slots=True)
class SortColumn:
    """One ORDER BY expression over ``traces AS t`` (and its joins), its ClickHouse type and direction."""

    expr: str
    ch_type: str
    ascending: bool


DEFAULT_TIEBREAKERS = (
    OrderKey(Entity.ATTRIBUTE, "timestamp_ms", ascending=False),
    OrderKey(Entity.ATTRIBUTE, "request_id", ascending=True),
)


def _unparsable(clause: str, position: int | None = None) -> InvalidOrderByError:
    return InvalidOrderByError(f"Invalid order_by clause '{clause}'. Could not be parsed.",
                               position=position, token=clause)


def parse_order_clause(clause: str) -> OrderKey:
    """Parse one ``"<key> [ASC|DESC]"`` clause (without tie-breakers)."""
    try:
        tokens = tokenize(clause)
    except InvalidFilterError as exc:
        raise _unparsable(clause, exc.position) from exc
    kinds = [t.kind for t in tokens]
    if kinds not in (["IDENT", "EOF"], ["IDENT", "IDENT", "EOF"]):
        bad = next((t for t in tokens[1:] if t.kind != "IDENT"), tokens[0])
        raise _unparsable(clause, bad.position)
    ident = tokens[0]
    ascending = True
    if kinds[1] == "IDENT":
        direction = tokens[1]
        if len(direction.segments) != 1 or direction.text.lower() not in ("asc", "desc"):
            raise InvalidOrderByError(f"Invalid ordering key in order_by clause '{clause}'.",
                                      position=direction.position, token=direction.text)
        ascending = direction.text.lower() == "asc"
    segments = ident.segments
    if len(segments) == 1:
        entity, key = Entity.ATTRIBUTE, segments[0]
    else:
        found = ENTITY_ALIASES.get(segments[0])
        if found is None:
            raise InvalidOrderByError(
                f"Invalid entity type '{segments[0]}'. Valid values are {VALID_ENTITIES_TEXT}",
                position=ident.position, token=segments[0])
        entity, key = found, ".".join(segments[1:])
        if entity not in (Entity.ATTRIBUTE, Entity.TAG, Entity.METADATA):
            raise InvalidOrderByError(f"Invalid order_by entity `{entity.value}` with key `{key}`",
                                      position=ident.position, token=ident.text)
    if entity is Entity.ATTRIBUTE:
        if key not in ORDER_BY_ATTRIBUTES:
            raise InvalidOrderByError(
                f"Invalid attribute key '{key}' specified. Valid keys are '{py_set(ORDER_BY_ATTRIBUTES)}'",
                position=ident.position, token=key)
        if key == "name":
            entity, key = Entity.TAG, TRACE_NAME_KEY
        elif key == "run_id":
            entity, key = Entity.METADATA, SOURCE_RUN_KEY
        else:
            key = ATTRIBUTE_ALIASES.get(key, key)
    if entity is Entity.METADATA and key in UNORDERABLE_METADATA:
        raise InvalidOrderByError(f"Ordering by metadata key '{key}' is not supported.",
                                  position=ident.position, token=key)
    return OrderKey(entity, key, ascending)


def parse_order_by(order_by: Sequence[str] | None) -> tuple[OrderKey, ...]:
    """Parse every clause and append the implicit tie-breakers (``timestamp_ms DESC, request_id ASC``)."""
    if isinstance(order_by, str):
        order_by = [order_by]
    keys = [parse_order_clause(c) for c in order_by or ()]
    for tiebreaker in DEFAULT_TIEBREAKERS:
        if not any(k.entity is Entity.ATTRIBUTE and k.key == tiebreaker.key for k in keys):
            keys.append(tiebreaker)
    return tuple(keys)


def sort_columns(keys: Sequence[OrderKey], params: Params) -> tuple[list[SortColumn], list[str]]:
    """The ORDER BY columns for ``keys`` and the LEFT JOINs (on ``traces AS t``) they need.

    A tag or metadata key gives two columns: "has the key" (always descending, so traces without it
    come last) and its value in the requested direction.
    """
    columns: list[SortColumn] = []
    joins: list[str] = []
    for key in keys:
        if key.entity is Entity.ATTRIBUTE:
            expr, ch_type = ATTRIBUTE_SQL[key.key]
            columns.append(SortColumn(expr, ch_type, key.ascending))
        elif key.entity is Entity.TAG:
            alias = f"o{len(joins)}"
            joins.append(
                f"LEFT ANY JOIN (SELECT trace_id, value FROM trace_tags FINAL WHERE key = "
                f"{params.add(key.key, 'String')} AND is_deleted = 0) AS {alias} "
                f"ON {alias}.trace_id = t.trace_id"
            )
            columns.append(SortColumn(f"toUInt8({alias}.trace_id != '')", "UInt8", False))
            columns.append(SortColumn(f"{alias}.value", "String", key.ascending))
        else:
            present, value = metadata_sql(key.key, params)
            columns.append(SortColumn(f"toUInt8({present})", "UInt8", False))
            columns.append(SortColumn(value, "String", key.ascending))
    return columns, joins


def order_by_sql(columns: Sequence[SortColumn]) -> str:
    return ", ".join(f"{c.expr} {'ASC' if c.ascending else 'DESC'}" for c in columns)


def keyset_predicate(columns: Sequence[SortColumn], values: Sequence[object], params: Params) -> str:
    """Rows strictly after ``values`` (the sort key of the last row of the previous page)."""
    placeholders = [params.add(v, c.ch_type) for c, v in zip(columns, values, strict=True)]
    alternatives: list[str] = []
    for i, column in enumerate(columns):
        terms = [f"{columns[j].expr} = {placeholders[j]}" for j in range(i)]
        terms.append(f"{column.expr} {'>' if column.ascending else '<'} {placeholders[i]}")
        alternatives.append("(" + " AND ".join(terms) + ")")
    return "(" + " OR ".join(alternatives) + ")"
