"""Wire format: an envelope is one Kafka message whose value is NDJSON, one event per line.

Producers pack many events bound for one partition into one envelope, so the per-message cost of
Kafka and faust is paid once per envelope, not once per trace. A single JSON event with no newline
is a valid envelope of one, so any Kafka client can publish to tracehouse.

Lines decode independently: one bad line is dead-lettered alone and the rest of its envelope flows on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

import msgspec
import orjson

from .errors import EventDecodeError
from .events import Event

#: Kafka headers every envelope carries.
HEADER_FORMAT: Final = "th-format"
HEADER_SCHEMA: Final = "th-schema"
HEADER_COUNT: Final = "th-count"
FORMAT_NDJSON: Final = b"ndjson"

_decoder: Final[msgspec.json.Decoder[Event]] = msgspec.json.Decoder(Event)


def encode_event(event: Event | dict[str, Any]) -> bytes:
    """Encode one event (a Struct or a plain dict in the same shape) as compact JSON."""
    if isinstance(event, dict):
        return orjson.dumps(event)
    return msgspec.json.encode(event)


def encode_envelope(events: Iterable[bytes]) -> bytes:
    """Join already-encoded events into one NDJSON envelope."""
    return b"\n".join(events)


def envelope_headers(count: int) -> list[tuple[str, bytes]]:
    """The Kafka headers of an envelope holding ``count`` events."""
    return [
        (HEADER_FORMAT, FORMAT_NDJSON),
        (HEADER_SCHEMA, b"1"),
        (HEADER_COUNT, str(count).encode()),
    ]


def split_envelope(value: bytes) -> Iterator[bytes]:
    """Yield the non-empty lines of an envelope."""
    for line in value.split(b"\n"):
        if line.strip():
            yield line


def decode_event(line: bytes) -> Event:
    """Decode and validate one event, raising :class:`EventDecodeError` with a precise reason."""
    try:
        event: Event = _decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise EventDecodeError(f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"undecodable event: {exc}") from None
    return event
