"""What ``list_sessions`` and ``list_users`` share: ``order_by`` clauses over a fixed set of keys, the
keyset condition that starts a page strictly after the previous one, and millisecond parameters."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from tracehouse.schemas.errors import InvalidOrderByError, InvalidParameterError

from ._params import Params


def parse_order(
    order_by: str | Sequence[str] | None, keys: Collection[str], default: str, what: str
) -> list[tuple[str, bool]]:
    """``["turns DESC", "first_ms"]`` → ``[("turns", True), ("first_ms", False)]`` (descending flag),
    each key one of ``keys``; ``default`` when none is given."""
    clauses = [order_by] if isinstance(order_by, str) else list(order_by or [])
    if not clauses:
        clauses = [default]
    out: list[tuple[str, bool]] = []
    for clause in clauses:
        parts = str(clause).split()
        if not parts or len(parts) > 2:
            raise InvalidOrderByError(f"Invalid order_by clause {clause!r}: expected '<key> [ASC|DESC]'",
                                      token=str(clause))  # fmt: skip
        key = parts[0]
        if key not in keys:
            raise InvalidOrderByError(
                f"Invalid order_by key {key!r} for {what}; use one of {', '.join(keys)}", token=key
            )
        direction = parts[1].upper() if len(parts) == 2 else "ASC"
        if direction not in ("ASC", "DESC"):
            raise InvalidOrderByError(f"Invalid order_by direction {parts[1]!r}: use ASC or DESC", token=parts[1])
        if any(k == key for k, _ in out):
            raise InvalidOrderByError(f"order_by key {key!r} is given twice", token=key)
        out.append((key, direction == "DESC"))
    return out


def keyset_after(columns: Sequence[tuple[str, bool, str]], key: Sequence[Any], params: Params) -> str:
    """Rows strictly after ``key`` in the lexicographic order of ``columns`` (expr, descending, type)."""
    ors: list[str] = []
    for i, (expr, desc, ch_type) in enumerate(columns):
        ands = [f"{c} = {params.add(v, t)}" for (c, _, t), v in zip(columns[:i], key[:i], strict=True)]
        ands.append(f"{expr} {'<' if desc else '>'} {params.add(key[i], ch_type)}")
        ors.append("(" + " AND ".join(ands) + ")")
    return "(" + " OR ".join(ors) + ")"


def millis(name: str, value: int | None) -> int | None:
    """A ``since`` / ``until`` style parameter: an integer (ms since the epoch) or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(f"Invalid value {value!r} for parameter '{name}': it must be an integer "
                                    "(milliseconds since the epoch)")  # fmt: skip
    return value
