"""The sessionizer's configuration: declared once, typed, frozen.

Precedence is explicit argument > environment > default (the variables and defaults are declared in
:mod:`tracehouse.schemas.settings`). The environment is read only when
:meth:`SessionizerConfig.resolve` is called, never at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from tracehouse.schemas import Topics
from tracehouse.schemas import settings as s
from tracehouse.schemas.errors import ConfigurationError

from ._session import SessionConfig

DEFAULT_SESSIONIZER_ID: Final = "tracehouse-sessionizer"
#: Must equal the partition count of ``traces.v1`` (and ``sessions.v1``): see ``ensure_topics``.
DEFAULT_PARTITIONS: Final = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionizerConfig(s.FromEnvironment):
    """Everything the sessionizer worker needs. Build it with :meth:`resolve` to honour the environment."""

    ENVIRONMENT: ClassVar[Mapping[str, s.Setting[Any]]] = {
        "bootstrap": s.KAFKA_BOOTSTRAP, "topic_prefix": s.TOPIC_PREFIX, "compression": s.KAFKA_COMPRESSION,
        "inactivity_gap_ms": s.SESSION_GAP_MS, "max_duration_ms": s.SESSION_MAX_MS,
    }  # fmt: skip

    #: Kafka bootstrap servers, ``host:port[,host:port]``.
    bootstrap: str = s.KAFKA_BOOTSTRAP.default
    #: Prefix of every tracehouse topic (see :class:`tracehouse.schemas.Topics`).
    topic_prefix: str = s.TOPIC_PREFIX.default
    #: faust app id = consumer group; also names the state changelog topic
    #: (``<app_id>-sessions-changelog``), so two installations on one broker need two ids.
    app_id: str = DEFAULT_SESSIONIZER_ID
    #: Dirty sessions are written to the changelog and emitted, and their source events acked,
    #: this often.
    flush_interval_ms: int = 500
    #: A session is closed when the partition's event-time watermark passes its last turn's end by this much.
    inactivity_gap_ms: int = s.SESSION_GAP_MS.default
    #: ... or when it has lasted this long (``None``: no limit).
    max_duration_ms: int | None = None
    #: Partition count of ``traces.v1``, ``sessions.v1`` and the changelog (all the same).
    partitions: int = DEFAULT_PARTITIONS
    #: Partition count of ``user-rollups.v1`` (facts go to ``murmur2(user id) % rollup_partitions``).
    rollup_partitions: int = DEFAULT_PARTITIONS
    #: Emit each new trace's ``user_trace`` fact to ``user-rollups.v1`` (the per-user rollups).
    emit_rollups: bool = True
    #: Give a trace with a user but no session id an inferred session (``inferred:<user>:<first ms>``):
    #: the user's traces closer than ``inactivity_gap_ms`` to each other form one session.
    infer_sessions: bool = False
    #: Trace times further than this ahead of the wall clock do not advance the watermark (a producer
    #: sending microseconds, or a wrong clock, must not close every session).
    max_clock_skew_ms: int = 24 * 3_600_000
    #: Forget closed sessions this long (event time) after their last turn; ``None`` keeps them.
    #: A duplicate or late turn arriving after that is counted as new (see docs/design/sessions.md).
    state_retention_ms: int | None = None
    #: faust's data directory (the memory store still creates ``<datadir>/<app_id>-data``).
    datadir: str = ".tracehouse/sessionizer"
    #: Most session records in one ``sessions.v1`` envelope.
    max_records_per_envelope: int = 1000
    #: Codec of what the sessionizer produces (facts, records and its changelog).
    compression: str = s.KAFKA_COMPRESSION.default
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.0
    commit_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.app_id:
            raise ConfigurationError("app_id must not be empty")
        if self.partitions < 1:
            raise ConfigurationError("partitions must be at least 1")
        if self.flush_interval_ms < 1:
            raise ConfigurationError("flush_interval_ms must be at least 1")
        if self.inactivity_gap_ms < 1:
            raise ConfigurationError("inactivity_gap_ms must be at least 1")
        if self.max_duration_ms is not None and self.max_duration_ms < 1:
            raise ConfigurationError("max_duration_ms must be at least 1 (or None)")
        if self.rollup_partitions < 1:
            raise ConfigurationError("rollup_partitions must be at least 1")
        if self.state_retention_ms is not None and self.state_retention_ms < self.inactivity_gap_ms:
            raise ConfigurationError("state_retention_ms must be at least inactivity_gap_ms (or None)")
        if self.max_records_per_envelope < 1:
            raise ConfigurationError("max_records_per_envelope must be at least 1")

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def session_config(self) -> SessionConfig:
        return SessionConfig(inactivity_gap_ms=self.inactivity_gap_ms, max_duration_ms=self.max_duration_ms)
