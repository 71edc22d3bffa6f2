"""How events travel on Kafka: the partition key of every event, Kafka's default partitioner, and the
envelope packer. One place, so the SDK, the ingest gateway and the sessionizer cannot drift apart.

* :func:`partition_key` keys a trace by its session (else its user, else its id), so every turn of a
  session lands on one partition, in order, and the sessionizer needs no repartition. Spans and
  assessments follow their trace's session when they know it; tags go by trace id; session records by
  session; ``user_trace`` facts by user; SDK heartbeats by process.
* :func:`partition_for` is Kafka's default partitioner (``murmur2(key) & 0x7fffffff % n``, as the Java
  client and aiokafka compute it), so any Kafka client keying the same way agrees with tracehouse.
* :func:`pack` groups encoded events into NDJSON envelopes (one Kafka message each) of at most
  :data:`MAX_ENVELOPE_BYTES`, one open envelope per partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ._codec import envelope_headers
from .events import AssessmentEvent, Event, SdkHeartbeat, SessionRecord, SpansEvent, TraceEvent, UserTraceFact
from .keys import resolve_identity

__all__ = [
    "KAFKA_MAX_MESSAGE_BYTES",
    "MAX_ENVELOPE_BYTES",
    "Envelope",
    "pack",
    "partition_for",
    "partition_key",
    "producer_compression",
]

#: Kafka's default ``message.max.bytes`` (1 MiB): what a broker accepts unless configured otherwise.
KAFKA_MAX_MESSAGE_BYTES: Final = 1024 * 1024
#: The largest envelope (and so the largest single event) any tracehouse producer builds: room under
#: :data:`KAFKA_MAX_MESSAGE_BYTES` for the record's key, headers and batch overhead.
MAX_ENVELOPE_BYTES: Final = 900 * 1024

_HASH_CACHE_MAX: Final = 50_000


def producer_compression(codec: str) -> str | None:
    """aiokafka's ``compression_type`` for a ``TRACEHOUSE_KAFKA_COMPRESSION`` codec (``none``: ``None``)."""
    return None if codec == "none" else codec

_hash_cache: dict[bytes, int] = {}


def partition_key(event: Event | Mapping[str, Any]) -> str:
    """The key an event is partitioned by; ``event`` is a contract struct or its plain-dict form.

    ``trace``: its session (``mlflow.trace.session`` or an alias, in the metadata, else in the first
    span's attributes), else its user (a user's session-less traces stay together, so sessions can be
    inferred), else its trace id. ``spans``: its session, else its user, else its trace id.
    ``assessment``: its session, else its trace id. ``session``: its session. ``user_trace``: its user.
    ``tag_set`` / ``tag_delete``: the trace id.
    """
    if isinstance(event, Mapping):
        return _dict_key(event)
    if isinstance(event, TraceEvent):
        attrs = event.spans[0].attributes if event.spans else None
        user, session = resolve_identity(event.metadata, attrs)
        return session or user or event.trace_id
    if isinstance(event, SpansEvent):
        return event.session_id or event.user_id or event.trace_id
    if isinstance(event, AssessmentEvent):
        return event.session_id or event.trace_id
    if isinstance(event, SessionRecord):
        return event.session_id
    if isinstance(event, UserTraceFact):
        return event.user_id
    if isinstance(event, SdkHeartbeat):
        return event.process_id
    return event.trace_id


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict_key(event: Mapping[str, Any]) -> str:
    kind = event.get("type")
    if kind == "trace":
        spans = event.get("spans") or ()
        first = spans[0] if spans else None
        attrs = first.get("attributes") if isinstance(first, Mapping) else None
        user, session = resolve_identity(event.get("metadata") or {}, attrs)
        key = session or user
    elif kind == "spans":
        key = _text(event.get("session_id")) or _text(event.get("user_id"))
    elif kind == "assessment" or kind == "session":
        key = _text(event.get("session_id"))
    elif kind == "user_trace":
        key = _text(event.get("user_id"))
    elif kind == "sdk_heartbeat":
        return _text(event.get("process_id"))
    else:
        key = None
    return key or str(event["trace_id"])


def _murmur2(data: bytes) -> int:
    from aiokafka.partitioner import murmur2  # Kafka's own hash; imported on first use only

    value: int = murmur2(data)
    return value


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among the sorted ``partitions``."""
    h = _hash_cache.get(key)
    if h is None:
        if len(_hash_cache) >= _HASH_CACHE_MAX:
            _hash_cache.clear()
        h = _hash_cache[key] = _murmur2(key) & 0x7FFFFFFF
    return partitions[h % len(partitions)]


@dataclass(slots=True)
class Envelope:
    """One Kafka message: NDJSON ``lines`` bound for ``partition``, keyed by its first event's key."""

    partition: int
    key: bytes | None
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    @property
    def count(self) -> int:
        return len(self.lines)

    @property
    def value(self) -> bytes:
        return b"\n".join(self.lines)

    def headers(self) -> list[tuple[str, bytes]]:
        return envelope_headers(len(self.lines))


def pack(
    lines: Iterable[tuple[int, bytes | None, bytes]],
    max_bytes: int = MAX_ENVELOPE_BYTES,
    max_lines: int | None = None,
) -> list[Envelope]:
    """Pack ``(partition, key, line)`` into envelopes, in arrival order, one open envelope per
    partition. An envelope is closed when the next line would take it past ``max_bytes`` or
    ``max_lines``; a single line larger than ``max_bytes`` travels alone (the caller keeps events
    under :data:`MAX_ENVELOPE_BYTES`)."""
    open_by_partition: dict[int, Envelope] = {}
    envelopes: list[Envelope] = []
    for partition, key, line in lines:
        env = open_by_partition.get(partition)
        if env is not None and env.lines and (
            env.size + 1 + len(line) > max_bytes or (max_lines is not None and len(env.lines) >= max_lines)
        ):
            env = None
        if env is None:
            env = open_by_partition[partition] = Envelope(partition, key)
            envelopes.append(env)
        env.size += len(line) + (1 if env.lines else 0)
        env.lines.append(line)
    return envelopes
