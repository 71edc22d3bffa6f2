"""Make recorded values JSON-safe, cheaply, with size caps.

Runs in the application thread when a value is recorded (so later mutation by the app cannot change
what was recorded, and the publisher thread never touches application objects). Common types
(str, int, float, bool, None, list, tuple, dict) are handled by ``type(x) is`` checks; anything else
goes through a short chain of known conversions and finally ``repr``. It never raises.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import uuid
from collections.abc import Mapping
from typing import Any, Final

TRUNCATION_MARK: Final = "..."
_MAX_DEPTH: Final = 16
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


class _Limits:
    __slots__ = ("chars", "items")

    def __init__(self) -> None:
        self.chars = 10_000
        self.items = 1_000


_limits = _Limits()


def set_limits(max_chars: int, max_items: int) -> None:
    """Install the caps of the active configuration."""
    _limits.chars = max_chars
    _limits.items = max_items


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when cut (MLflow style)."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(TRUNCATION_MARK), 0)] + TRUNCATION_MARK


def safe_repr(value: object, limit: int | None = None) -> str:
    """``repr(value)`` truncated; never raises."""
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return truncate(text, _limits.chars if limit is None else limit)


def to_jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value`` (strings cut to ``max_payload_chars``, at most
    ``max_payload_items`` container items in all, depth 16); ``repr`` for anything unknown."""
    t = type(value)
    if t is str:
        return value if len(value) <= _limits.chars else truncate(value, _limits.chars)
    if value is None or t is bool or t is float:
        return value
    if t is int:
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if (t is dict or t is list or t is tuple) and len(value) <= _limits.items:
        flat = _flat_copy(value, t)
        if flat is not None:
            return flat
    try:
        return _convert(value, _MAX_DEPTH, [_limits.items])
    except Exception:  # RecursionError, a broken __iter__ / __getattr__ ...
        return safe_repr(value)


def _flat_copy(value: Any, t: type) -> Any:
    """A plain copy of a small dict / list / tuple of scalars and short strings (the common case),
    or ``None`` when anything in it needs conversion."""
    chars = _limits.chars
    if t is dict:
        for k, v in value.items():
            tv = type(v)
            if type(k) is not str or not (
                (tv is str and len(v) <= chars) or v is None or tv is bool or tv is float or tv is int
            ):
                return None
            if tv is int and not _INT_MIN <= v <= _INT_MAX:
                return None
        return dict(value)
    for v in value:
        tv = type(v)
        if not ((tv is str and len(v) <= chars) or v is None or tv is bool or tv is float or tv is int):
            return None
        if tv is int and not _INT_MIN <= v <= _INT_MAX:
            return None
    return list(value)


def _convert(value: Any, depth: int, budget: list[int]) -> Any:
    t = type(value)
    if t is str:
        chars = _limits.chars
        return value if len(value) <= chars else truncate(value, chars)
    if value is None or t is bool or t is float:
        return value
    if t is int:
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if t is dict:
        return _convert_mapping(value, depth, budget)
    if t is list or t is tuple:
        return _convert_sequence(value, depth, budget)
    return _convert_other(value, depth, budget)


def _convert_mapping(value: Mapping[Any, Any], depth: int, budget: list[int]) -> Any:
    if depth <= 0:
        return safe_repr(value)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if budget[0] <= 0:
            out[TRUNCATION_MARK] = f"{len(value) - len(out)} more item(s)"
            break
        budget[0] -= 1
        out[key if type(key) is str else _key(key)] = _convert(item, depth - 1, budget)
    return out


def _convert_sequence(value: Any, depth: int, budget: list[int]) -> Any:
    if depth <= 0:
        return safe_repr(value)
    out: list[Any] = []
    for item in value:
        if budget[0] <= 0:
            try:
                out.append(f"{TRUNCATION_MARK} {len(value) - len(out)} more item(s)")
            except TypeError:  # an iterator without len()
                out.append(TRUNCATION_MARK)
            break
        budget[0] -= 1
        out.append(_convert(item, depth - 1, budget))
    return out


def _key(key: Any) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, enum.Enum):
        return str(key.value)
    if key is None or isinstance(key, (bool, int, float)):
        return str(key)
    return safe_repr(key, 250)


def _convert_other(value: Any, depth: int, budget: list[int]) -> Any:
    if isinstance(value, enum.Enum):
        return _convert(value.value, depth, budget)
    if isinstance(value, str):
        return _convert(str.__str__(value), depth, budget)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _convert(int(value), depth, budget)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return _convert_mapping(value, depth, budget)
    if isinstance(value, (list, tuple, set, frozenset)):
        return _convert_sequence(value, depth, budget)
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value[: _limits.chars]).decode("utf-8", "replace")
        return text + TRUNCATION_MARK if len(value) > _limits.chars else text
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, BaseException):
        return truncate(f"{type(value).__name__}: {value}", _limits.chars)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if depth <= 0:
            return safe_repr(value)
        return _convert_mapping(
            {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}, depth, budget
        )
    model_dump = getattr(value, "model_dump", None)  # pydantic v2 models
    if callable(model_dump) and not isinstance(value, type):
        return _convert(model_dump(), depth, budget)
    return safe_repr(value)
