"""The sink's configuration: declared once, typed, frozen.

Precedence is explicit argument > environment > default (the variables and defaults are declared in
:mod:`tracehouse.schemas.settings`). The environment is read only when :meth:`SinkConfig.resolve` is
called, never at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from tracehouse.schemas import Topics
from tracehouse.schemas import settings as s
from tracehouse.schemas.errors import ConfigurationError

#: The sink's variables and defaults, as declared in :mod:`tracehouse.schemas.settings`.
ENV_BOOTSTRAP, ENV_TOPIC_PREFIX, ENV_STORE_URI = s.KAFKA_BOOTSTRAP.env, s.TOPIC_PREFIX.env, s.STORE_URI.env
DEFAULT_BOOTSTRAP, DEFAULT_STORE_URI = s.KAFKA_BOOTSTRAP.default, s.STORE_URI.default
DEFAULT_GROUP_ID = s.SINK_GROUP.default


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkConfig(s.FromEnvironment):
    """Everything the sink needs to know. Build it with :meth:`resolve` to honour the environment
    (``SinkConfig.resolve(bootstrap=..., store_uri=..., env=..., **other_fields)``)."""

    ENVIRONMENT: ClassVar[Mapping[str, s.Setting[Any]]] = {
        "bootstrap": s.KAFKA_BOOTSTRAP, "topic_prefix": s.TOPIC_PREFIX, "store_uri": s.STORE_URI,
        "group_id": s.SINK_GROUP, "compression": s.KAFKA_COMPRESSION, "inactivity_gap_ms": s.SESSION_GAP_MS,
        "max_duration_ms": s.SESSION_MAX_MS, "reconcile_window_s": s.RECONCILE_WINDOW_S,
        "max_event_bytes": s.SINK_MAX_EVENT_BYTES, "max_consecutive_refused": s.SINK_MAX_CONSECUTIVE_REFUSED,
        "max_refused_ratio": s.SINK_MAX_REFUSED_RATIO, "refused_window": s.SINK_REFUSED_WINDOW,
    }  # fmt: skip

    #: Kafka bootstrap servers, ``host:port[,host:port]``.
    bootstrap: str = DEFAULT_BOOTSTRAP
    #: Prefix of every tracehouse topic (see :class:`tracehouse.schemas.Topics`).
    topic_prefix: str = s.TOPIC_PREFIX.default
    #: Where rows go: ``chdb:///path`` or ``clickhouse://user:pass@host:8123/db``.
    store_uri: str = DEFAULT_STORE_URI
    #: Consumer group. The ledger and the deduplication tokens are scoped by it.
    group_id: str = DEFAULT_GROUP_ID
    client_id: str = "tracehouse-sink"
    #: Dead-letter topic; ``None`` means ``Topics(topic_prefix).dlq``.
    dlq_topic: str | None = None
    #: Also consume the sessionizer's topics: ``sessions.v1`` records into ``sessions`` and
    #: ``user-rollups.v1`` facts into ``user_rollups_daily``.
    consume_sessions: bool = True
    #: A partition's batch is flushed when it holds this many rows (all tables together) ...
    max_batch_rows: int = 50_000
    #: ... or this many bytes of envelope payload ...
    max_batch_bytes: int = 32 * 1024 * 1024
    #: ... or when its first record is this old.
    max_batch_age_ms: int = 500
    #: Longest wait in one ``getmany``; bounds how late a stop request or a due batch is noticed.
    poll_timeout_ms: int = 200
    #: Kafka messages (envelopes) per ``getmany``.
    max_poll_records: int = 500
    max_partition_fetch_bytes: int = 8 * 1024 * 1024
    #: First and largest pause between retries of a failed flush (doubling in between).
    retry_backoff_ms: int = 200
    retry_backoff_max_ms: int = 10_000
    #: How long a revoke may spend flushing before it gives the partitions up uncommitted.
    revoke_timeout_s: float = 10.0
    #: How long ``stop()`` may spend flushing before it gives up (uncommitted, so replayed later).
    drain_timeout_s: float = 30.0
    #: A ClickHouse write still running after this long stops the sink (``WriteStuck``): a hung server
    #: must not hold the partitions forever; the restarted sink replays from the committed offsets.
    write_timeout_s: float = 120.0
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    dlq_acks: Literal["all", 1] = "all"
    #: Session boundaries, as the sessionizer draws them: reconciliation recomputes session status by them.
    inactivity_gap_ms: int = s.SESSION_GAP_MS.default
    max_duration_ms: int | None = s.SESSION_MAX_MS.default
    #: How far back from the latest change a reconciliation after an unclean stop looks, at most.
    reconcile_window_s: float = s.RECONCILE_WINDOW_S.default
    #: Codec of the dead letters the sink produces.
    compression: str = s.KAFKA_COMPRESSION.default
    #: Largest dead letter sent whole; a bigger one keeps its first 64 KiB (``th-dlq-truncated``).
    #: Keep it at or below the broker's ``message.max.bytes``.
    dlq_max_request_size: int = 1024 * 1024
    #: Minimum seconds between two "dead-lettered ..." warnings.
    dlq_log_interval_s: float = 10.0
    #: A longer event line is dead-lettered as ``oversized event``.
    max_event_bytes: int = s.SINK_MAX_EVENT_BYTES.default
    #: Stop (:class:`~tracehouse.schemas.errors.DeadLetterLimitExceeded`) after this many refused lines in a
    #: row (``0``: never) ...
    max_consecutive_refused: int = s.SINK_MAX_CONSECUTIVE_REFUSED.default
    #: ... or when more than this share of the last ``refused_window`` lines was refused (``1``: never).
    max_refused_ratio: float = s.SINK_MAX_REFUSED_RATIO.default
    refused_window: int = s.SINK_REFUSED_WINDOW.default

    def __post_init__(self) -> None:
        for name in ("max_batch_rows", "max_batch_bytes", "max_poll_records", "max_partition_fetch_bytes",
                     "max_event_bytes", "refused_window"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
        for name in ("max_batch_age_ms", "poll_timeout_ms", "retry_backoff_ms", "max_consecutive_refused"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must not be negative")
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise ConfigurationError("retry_backoff_max_ms must be at least retry_backoff_ms")
        if not 0.0 <= self.max_refused_ratio <= 1.0:
            raise ConfigurationError("max_refused_ratio must be between 0 and 1")
        if not self.group_id:
            raise ConfigurationError("group_id must not be empty")

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def source_topic(self) -> str:
        """The trace topic the sink consumes: trace, tag and assessment envelopes."""
        return self.topics.traces

    @property
    def sessions_topic(self) -> str:
        """The sessionizer's topic: session records (newest version wins in ``sessions``)."""
        return self.topics.sessions

    @property
    def rollups_topic(self) -> str:
        """The sessionizer's per-user facts (partitioned by user), folded into ``user_rollups_daily``."""
        return self.topics.user_rollups

    @property
    def source_topics(self) -> tuple[str, ...]:
        """Every topic the sink subscribes to. The ledger and the dedup tokens are per topic and
        partition, so one consumer group serves them all."""
        if self.consume_sessions:
            return (self.source_topic, self.sessions_topic, self.rollups_topic)
        return (self.source_topic,)

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic if self.dlq_topic is not None else self.topics.dlq
