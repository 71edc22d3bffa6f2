"""Kafka topic names. One place, so producers, processors and deploy files agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, overload

DEFAULT_TOPIC_PREFIX = "tracehouse."


class _Topic:
    """A topic of an installation: ``<prefix><suffix>``."""

    def __init__(self, suffix: str, doc: str) -> None:
        self.suffix, self.__doc__ = suffix, doc

    @overload
    def __get__(self, obj: None, owner: Any) -> _Topic: ...

    @overload
    def __get__(self, obj: Topics, owner: Any) -> str: ...

    def __get__(self, obj: Topics | None, owner: Any) -> _Topic | str:
        return self if obj is None else f"{obj.prefix}{self.suffix}"


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one tracehouse installation, all sharing ``prefix``."""

    prefix: str = DEFAULT_TOPIC_PREFIX

    traces = _Topic("traces.v1", "Trace, tag and assessment events (NDJSON envelopes), keyed by session or trace id.")
    dlq = _Topic("dlq.v1", "Events that failed to decode or validate, with the reason and origin in headers.")
    sessions = _Topic("sessions.v1", "Session records emitted by the sessionizer.")
    user_rollups = _Topic("user-rollups.v1", "Per-user rollup facts emitted by the sessionizer, keyed by user.")
    epoch = _Topic(
        "epoch.v1",
        "One partition whose first record names this incarnation of the topics (offsets mean something "
        "only within one): a broker that lost its data has a new epoch.",
    )
