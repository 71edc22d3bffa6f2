"""Wire encodings shared by the entities: protobuf-JSON timestamps and durations, OTel ids and values."""

from __future__ import annotations

import base64
import binascii
import calendar
import re
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

_TIMESTAMP_RE: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$"
)
_DURATION_RE: Final = re.compile(r"^(-)?(\d+)(?:\.(\d{1,9}))?s$")
_HEX: Final = frozenset("0123456789abcdef")


def format_timestamp(ms: int) -> str:
    """Milliseconds since the epoch as protobuf-JSON ``Timestamp`` (RFC 3339, ``…Z``)."""
    seconds, millis = divmod(ms, 1000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{base}.{millis:03d}Z" if millis else f"{base}Z"


def parse_timestamp(value: Any) -> int:
    """An RFC 3339 string (or a number of milliseconds) as milliseconds since the epoch."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid timestamp {value!r}")
    if value.isdigit():
        return int(value)
    m = _TIMESTAMP_RE.match(value)
    if m is None:
        raise ValueError(f"invalid RFC 3339 timestamp {value!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7) or "", m.group(8)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1000 + int((frac + "000")[:3])


def format_duration(ms: int) -> str:
    """Milliseconds as protobuf-JSON ``Duration`` (``"0.412s"``, ``"3s"``)."""
    sign = "-" if ms < 0 else ""
    seconds, millis = divmod(abs(ms), 1000)
    return f"{sign}{seconds}.{millis:03d}s" if millis else f"{sign}{seconds}s"


def parse_duration(value: Any) -> int:
    """A ``Duration`` string (or a number of milliseconds) as milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    m = _DURATION_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"invalid duration {value!r}")
    ms = int(m.group(2)) * 1000 + int(((m.group(3) or "") + "000")[:3])
    return -ms if m.group(1) else ms


def encode_id(value: str, prefix: str = "") -> str:
    """A hex id (after ``prefix``) as base64 of its bytes, as protobuf JSON carries OTel ids."""
    raw = value.removeprefix(prefix) if prefix else value
    if (not prefix or value.startswith(prefix)) and raw and len(raw) % 2 == 0 and set(raw) <= _HEX:
        return base64.b64encode(bytes.fromhex(raw)).decode("ascii")
    return value


def decode_id(value: str, prefix: str = "", hex_len: int = 16) -> str:
    """Inverse of :func:`encode_id`; also accepts ids already in hex (OTLP/JSON) or prefixed form."""
    if (prefix and value.startswith(prefix)) or (len(value) == hex_len and set(value) <= _HEX):
        return value if value.startswith(prefix) else prefix + value
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value
    if len(raw) * 2 != hex_len:
        return value
    return prefix + raw.hex()


def get_field(obj: Mapping[str, Any], snake: str) -> Any:
    """``obj[snake]``, falling back to the camelCase spelling protobuf JSON may use."""
    if snake in obj:
        return obj[snake]
    head, *rest = snake.split("_")
    return obj.get(head + "".join(r.title() for r in rest))


def any_value(value: Any) -> dict[str, Any]:
    """A JSON value as an OTel ``AnyValue`` in protobuf JSON (snake_case)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"bool_value": value}
    if isinstance(value, int):
        return {"int_value": value}
    if isinstance(value, float):
        return {"double_value": value}
    if isinstance(value, str):
        return {"string_value": value}
    if isinstance(value, Mapping):
        values = [{"key": str(k), "value": any_value(v)} for k, v in value.items()]
        return {"kvlist_value": {"values": values}}
    if isinstance(value, list | tuple):
        return {"array_value": {"values": [any_value(v) for v in value]}}
    return {"string_value": str(value)}


def from_any_value(value: Mapping[str, Any]) -> Any:
    """Inverse of :func:`any_value`; accepts snake_case and camelCase field names."""
    if (s := get_field(value, "string_value")) is not None:
        return s
    if (b := get_field(value, "bool_value")) is not None:
        return bool(b)
    if (i := get_field(value, "int_value")) is not None:
        return int(i)
    if (d := get_field(value, "double_value")) is not None:
        return float(d)
    if (arr := get_field(value, "array_value")) is not None:
        return [from_any_value(v) for v in arr.get("values", [])]
    if (kv := get_field(value, "kvlist_value")) is not None:
        return {item["key"]: from_any_value(item.get("value", {})) for item in kv.get("values", [])}
    if (raw := get_field(value, "bytes_value")) is not None:
        return raw
    return None


def key_values(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A dict of attributes as OTel ``KeyValue`` list."""
    return [{"key": k, "value": any_value(v)} for k, v in attributes.items()]


def from_key_values(value: Any) -> dict[str, Any]:
    """OTel ``KeyValue`` list → dict. A plain mapping (the ``traces.json`` form, whose values are
    JSON-encoded strings) is decoded value by value."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(v, str):
                try:
                    out[k] = orjson.loads(v)
                except orjson.JSONDecodeError:
                    out[k] = v
            else:
                out[k] = v
        return out
    return {item["key"]: from_any_value(item.get("value", {})) for item in value or []}

