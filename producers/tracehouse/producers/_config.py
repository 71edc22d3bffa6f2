"""SDK configuration: one frozen :class:`TracehouseConfig`; explicit argument > environment > default.

Nothing here runs at import time. The environment is read when :func:`resolve_config` is called, which
the runtime does lazily on the first traced call, or eagerly in :func:`tracehouse.configure`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from tracehouse.schemas import DEFAULT_TOPIC_PREFIX, Topics

_log = logging.getLogger("tracehouse")

_TRUE: Final = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE: Final = frozenset({"0", "false", "no", "off", "n", "f", ""})

#: ``exporter`` receives each finished event as a plain dict instead of Kafka (tests, debugging).
Exporter = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class TracehouseConfig:
    """Everything the SDK needs, resolved once. Build it with :func:`tracehouse.configure`.

    Environment variables (used when the argument is not given to ``configure``):

    ``TRACEHOUSE_KAFKA_BOOTSTRAP`` (``localhost:9092``), ``TRACEHOUSE_EXPERIMENT_ID`` (``"0"``),
    ``TRACEHOUSE_TOPIC_PREFIX`` (``tracehouse.``), ``TRACEHOUSE_ENABLED`` (``true``),
    ``TRACEHOUSE_BUFFER_SIZE`` (100000 events), ``TRACEHOUSE_LINGER_MS`` (10),
    ``TRACEHOUSE_MAX_ENVELOPE_BYTES`` (524288), ``TRACEHOUSE_MAX_PAYLOAD_CHARS`` (10000),
    ``TRACEHOUSE_MAX_PAYLOAD_ITEMS`` (1000), ``TRACEHOUSE_SHUTDOWN_TIMEOUT`` (5 seconds).
    """

    #: Kafka ``bootstrap_servers``, comma separated.
    kafka_bootstrap: str = "localhost:9092"
    #: The MLflow experiment every trace belongs to.
    experiment_id: str = "0"
    #: Topic prefix shared with the processors (see :class:`tracehouse.schemas.Topics`).
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    #: ``False``: decorated code still runs and returns normally, but no span is recorded or published.
    enabled: bool = True
    #: Events accepted but not yet acknowledged, at most. Beyond it new events are dropped and counted.
    buffer_size: int = 100_000
    #: How long the publisher waits after the first event of a batch to gather more.
    linger_ms: float = 10.0
    #: Largest Kafka message (NDJSON envelope) the publisher builds.
    max_envelope_bytes: int = 512 * 1024
    #: Each string inside inputs, outputs and attributes is cut to this many characters.
    max_payload_chars: int = 10_000
    #: Each recorded value (inputs, outputs, one attribute) keeps at most this many container items.
    max_payload_items: int = 1_000
    #: Seconds the interpreter-exit flush may take.
    shutdown_timeout: float = 5.0
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
        if self.max_envelope_bytes < 1024:
            problems.append("max_envelope_bytes must be >= 1024")
        if self.max_payload_chars < 16:
            problems.append("max_payload_chars must be >= 16")
        if self.max_payload_items < 1:
            problems.append("max_payload_items must be >= 1")
        if self.shutdown_timeout < 0:
            problems.append("shutdown_timeout must be >= 0")
        if problems:
            raise ValueError("invalid tracehouse configuration: " + "; ".join(problems))
        if not isinstance(self.kafka_options, MappingProxyType):
            object.__setattr__(self, "kafka_options", MappingProxyType(dict(self.kafka_options)))

    @property
    def topics(self) -> Topics:
        """The topic names of this installation."""
        return Topics(self.topic_prefix)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected a boolean, got {text!r}")


_ENV: Final[dict[str, tuple[str, Callable[[str], Any]]]] = {
    "kafka_bootstrap": ("TRACEHOUSE_KAFKA_BOOTSTRAP", str.strip),
    "experiment_id": ("TRACEHOUSE_EXPERIMENT_ID", str.strip),
    "topic_prefix": ("TRACEHOUSE_TOPIC_PREFIX", str),
    "enabled": ("TRACEHOUSE_ENABLED", _parse_bool),
    "buffer_size": ("TRACEHOUSE_BUFFER_SIZE", int),
    "linger_ms": ("TRACEHOUSE_LINGER_MS", float),
    "max_envelope_bytes": ("TRACEHOUSE_MAX_ENVELOPE_BYTES", int),
    "max_payload_chars": ("TRACEHOUSE_MAX_PAYLOAD_CHARS", int),
    "max_payload_items": ("TRACEHOUSE_MAX_PAYLOAD_ITEMS", int),
    "shutdown_timeout": ("TRACEHOUSE_SHUTDOWN_TIMEOUT", float),
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
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (var, parse) in _ENV.items():
        raw = env.get(var)
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except ValueError:
            _log.warning("tracehouse: ignoring invalid %s=%r", var, raw)
    values.update(overrides)
    try:
        return TracehouseConfig(**values)
    except ValueError:
        if not any(name in values for name in _ENV if name not in overrides):
            raise
    # The explicit values may be fine and an environment value is out of range: drop the env values.
    _log.warning("tracehouse: ignoring out-of-range TRACEHOUSE_* environment variables")
    return TracehouseConfig(**overrides)
