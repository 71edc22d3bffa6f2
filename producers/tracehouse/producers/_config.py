"""SDK configuration: one frozen :class:`TracehouseConfig`; explicit argument > environment > default.

Every ``TRACEHOUSE_*`` variable and its default is declared in :mod:`tracehouse.schemas.settings`.
Nothing here runs at import time: the environment is read when :func:`resolve_config` is called, which
the runtime does lazily on the first traced call, or eagerly in :func:`tracehouse.configure`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from tracehouse.schemas import Topics
from tracehouse.schemas import settings as s
from tracehouse.schemas.errors import ConfigurationError
from tracehouse.schemas.kafka import MAX_ENVELOPE_BYTES

_log = logging.getLogger("tracehouse")

#: ``exporter`` receives each finished event as a plain dict instead of Kafka (tests, debugging).
Exporter = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class TracehouseConfig:
    """Everything the SDK needs, resolved once. Build it with :func:`tracehouse.configure`.

    Each field but ``kafka_options`` and ``exporter`` has an environment variable, used when the
    argument is not given to ``configure`` (see :data:`ENVIRONMENT` and ``docs/configuration.md``).
    """

    #: Kafka ``bootstrap_servers``, comma separated.
    kafka_bootstrap: str = s.KAFKA_BOOTSTRAP.default
    #: The MLflow experiment every trace belongs to.
    experiment_id: str = s.EXPERIMENT_ID.default
    #: Topic prefix shared with the processors (see :class:`tracehouse.schemas.Topics`).
    topic_prefix: str = s.TOPIC_PREFIX.default
    #: ``False``: decorated code still runs and returns normally, but no span is recorded or published.
    enabled: bool = s.ENABLED.default
    #: Events accepted but not yet acknowledged, at most. Beyond it new events are dropped and counted.
    buffer_size: int = s.BUFFER_SIZE.default
    #: How long the publisher waits after the first event of a batch to gather more.
    linger_ms: float = s.LINGER_MS.default
    #: Codec of the Kafka messages (``zstd``, ``lz4``, ``gzip``, ``snappy``, ``none``).
    compression: str = s.KAFKA_COMPRESSION.default
    #: Largest Kafka message (NDJSON envelope) the publisher builds.
    max_envelope_bytes: int = s.MAX_ENVELOPE_BYTES.default
    #: Each string inside inputs, outputs and attributes is cut to this many characters.
    max_payload_chars: int = s.MAX_PAYLOAD_CHARS.default
    #: Each recorded value (inputs, outputs, one attribute) keeps at most this many container items.
    max_payload_items: int = s.MAX_PAYLOAD_ITEMS.default
    #: Seconds the interpreter-exit flush may take.
    shutdown_timeout: float = s.SHUTDOWN_TIMEOUT_S.default
    #: A full buffer: ``"drop"`` the new event (never wait) or ``"block"`` the traced call for room.
    buffer_policy: str = s.BUFFER_POLICY.default
    #: With ``buffer_policy="block"``: longest wait for room, in seconds (then the event is dropped).
    buffer_block_timeout: float = s.BUFFER_BLOCK_TIMEOUT_S.default
    #: Acknowledged envelopes younger than this (seconds) are re-sent once if the broker is replaced.
    replay_window: float = s.REPLAY_WINDOW_S.default
    #: At most this many bytes of acknowledged envelopes are kept for that replay.
    replay_max_bytes: int = s.REPLAY_MAX_BYTES.default
    #: Seconds between two heartbeats with the counters (``sdk_heartbeat`` events); 0: none.
    heartbeat_interval: float = s.HEARTBEAT_S.default
    #: The app's name in its heartbeats (default: the script's name).
    service_name: str = s.SERVICE_NAME.default
    #: Extra keyword arguments for ``aiokafka.AIOKafkaProducer`` (security, SASL, compression...).
    kafka_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Send finished events to this callable, synchronously, instead of Kafka. Meant for tests.
    exporter: Exporter | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.kafka_bootstrap.strip():
            problems.append("kafka_bootstrap must not be empty")
        if not 1 <= len(self.experiment_id) <= 64:
            problems.append("experiment_id must have 1 to 64 characters")
        if self.buffer_size < 1:
            problems.append("buffer_size must be >= 1")
        if self.linger_ms < 0:
            problems.append("linger_ms must be >= 0")
        if self.compression not in s.COMPRESSION_CODECS:
            problems.append(f"compression must be one of {', '.join(s.COMPRESSION_CODECS)}")
        if not 1024 <= self.max_envelope_bytes <= MAX_ENVELOPE_BYTES:
            problems.append(f"max_envelope_bytes must be between 1024 and {MAX_ENVELOPE_BYTES}")
        if self.max_payload_chars < 16:
            problems.append("max_payload_chars must be >= 16")
        if self.max_payload_items < 1:
            problems.append("max_payload_items must be >= 1")
        if self.shutdown_timeout < 0:
            problems.append("shutdown_timeout must be >= 0")
        if self.buffer_policy not in s.BUFFER_POLICIES:
            problems.append(f"buffer_policy must be one of {', '.join(s.BUFFER_POLICIES)}")
        if not 0 <= self.buffer_block_timeout <= 3600:
            problems.append("buffer_block_timeout must be between 0 and 3600 seconds")
        if self.replay_window < 0:
            problems.append("replay_window must be >= 0")
        if self.heartbeat_interval < 0:
            problems.append("heartbeat_interval must be >= 0")
        if self.replay_max_bytes < 0:
            problems.append("replay_max_bytes must be >= 0")
        if problems:
            raise ConfigurationError("invalid tracehouse configuration: " + "; ".join(problems))
        if not isinstance(self.kafka_options, MappingProxyType):
            object.__setattr__(self, "kafka_options", MappingProxyType(dict(self.kafka_options)))

    @property
    def topics(self) -> Topics:
        """The topic names of this installation."""
        return Topics(self.topic_prefix)


#: The environment variable of each field that has one.
ENVIRONMENT: Final[dict[str, s.Setting[Any]]] = {
    "kafka_bootstrap": s.KAFKA_BOOTSTRAP,
    "experiment_id": s.EXPERIMENT_ID,
    "topic_prefix": s.TOPIC_PREFIX,
    "enabled": s.ENABLED,
    "buffer_size": s.BUFFER_SIZE,
    "linger_ms": s.LINGER_MS,
    "compression": s.KAFKA_COMPRESSION,
    "max_envelope_bytes": s.MAX_ENVELOPE_BYTES,
    "max_payload_chars": s.MAX_PAYLOAD_CHARS,
    "max_payload_items": s.MAX_PAYLOAD_ITEMS,
    "shutdown_timeout": s.SHUTDOWN_TIMEOUT_S,
    "buffer_policy": s.BUFFER_POLICY,
    "buffer_block_timeout": s.BUFFER_BLOCK_TIMEOUT_S,
    "replay_window": s.REPLAY_WINDOW_S,
    "replay_max_bytes": s.REPLAY_MAX_BYTES,
    "heartbeat_interval": s.HEARTBEAT_S,
    "service_name": s.SERVICE_NAME,
}

_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(TracehouseConfig))


def resolve_config(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> TracehouseConfig:
    """Build the configuration: ``overrides`` > ``environ`` (default ``os.environ``) > defaults.

    An unknown or invalid explicit override raises :class:`ValueError` (or :class:`TypeError`).
    An unparsable environment variable is logged and ignored, so a bad deployment variable never
    breaks the application.
    """
    overrides = dict(overrides or {})
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise TypeError(f"unknown tracehouse configuration option(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, setting in ENVIRONMENT.items():
        if setting.raw(environ) is not None:
            values[name] = setting.read(None, environ, strict=False)
    values.update(overrides)
    try:
        return TracehouseConfig(**values)
    except ValueError:
        if not any(name in values for name in ENVIRONMENT if name not in overrides):
            raise
    # The explicit values may be fine and an environment value is out of range: drop the env values.
    _log.warning("tracehouse: ignoring out-of-range TRACEHOUSE_* environment variables")
    return TracehouseConfig(**overrides)
