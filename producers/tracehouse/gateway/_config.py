"""The gateway's settings. Precedence: explicit argument > environment > default, read once (the
variables and defaults are declared in :mod:`tracehouse.schemas.settings`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from tracehouse.schemas import settings as s
from tracehouse.schemas.errors import ConfigurationError

DEFAULT_SINK_GROUP: Final = s.SINK_GROUP.default
DEFAULT_RYW_TIMEOUT_S: Final = s.READ_YOUR_WRITES_TIMEOUT_S.default


@dataclass(frozen=True, slots=True)
class GatewayConfig(s.FromEnvironment):
    """Where the HTTP server publishes what MLflow clients and OTLP exporters send. Build it with
    :meth:`resolve` to honour the environment."""

    ENVIRONMENT: ClassVar[Mapping[str, s.Setting[Any]]] = {
        "bootstrap": s.KAFKA_BOOTSTRAP, "topic_prefix": s.TOPIC_PREFIX, "sink_group": s.SINK_GROUP,
        "read_your_writes_timeout_s": s.READ_YOUR_WRITES_TIMEOUT_S, "compression": s.KAFKA_COMPRESSION,
    }  # fmt: skip

    #: Kafka bootstrap servers.
    bootstrap: str
    topic_prefix: str = s.TOPIC_PREFIX.default
    #: The sink's consumer group, whose committed offsets tell when a write is readable.
    sink_group: str = DEFAULT_SINK_GROUP
    #: Longest a read waits for the sink to store this server's acknowledged writes.
    read_your_writes_timeout_s: float = DEFAULT_RYW_TIMEOUT_S
    #: Codec of the Kafka messages the gateway publishes.
    compression: str = s.KAFKA_COMPRESSION.default

    def __post_init__(self) -> None:
        if not self.bootstrap:
            raise ConfigurationError("the gateway needs Kafka bootstrap servers")
        if self.read_your_writes_timeout_s < 0:
            raise ConfigurationError("read_your_writes_timeout_s must be >= 0")
