"""The gateway's settings. Precedence: explicit argument > environment > default, read once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from tracehouse.schemas import DEFAULT_TOPIC_PREFIX

ENV_BOOTSTRAP: Final = "TRACEHOUSE_KAFKA_BOOTSTRAP"
ENV_TOPIC_PREFIX: Final = "TRACEHOUSE_TOPIC_PREFIX"
ENV_SINK_GROUP: Final = "TRACEHOUSE_SINK_GROUP"
ENV_RYW_TIMEOUT: Final = "TRACEHOUSE_READ_YOUR_WRITES_TIMEOUT_S"
DEFAULT_SINK_GROUP: Final = "tracehouse-sink"
DEFAULT_RYW_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Where the HTTP server publishes what MLflow clients and OTLP exporters send."""

    #: Kafka bootstrap servers.
    bootstrap: str
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    #: The sink's consumer group, whose committed offsets tell when a write is readable.
    sink_group: str = DEFAULT_SINK_GROUP
    #: Longest a read waits for the sink to store this server's acknowledged writes.
    read_your_writes_timeout_s: float = DEFAULT_RYW_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.bootstrap:
            raise ValueError("the gateway needs Kafka bootstrap servers")
        if self.read_your_writes_timeout_s < 0:
            raise ValueError("read_your_writes_timeout_s must be >= 0")

    @classmethod
    def resolve(
        cls,
        bootstrap: str | None = None,
        topic_prefix: str | None = None,
        sink_group: str | None = None,
        read_your_writes_timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> GatewayConfig:
        e = os.environ if env is None else env

        def pick(explicit: str | None, var: str, default: str) -> str:
            if explicit is not None:
                return explicit
            return e.get(var) or default

        raw_timeout = e.get(ENV_RYW_TIMEOUT)
        try:
            timeout = read_your_writes_timeout_s if read_your_writes_timeout_s is not None else (
                float(raw_timeout) if raw_timeout else DEFAULT_RYW_TIMEOUT_S)  # fmt: skip
        except ValueError:
            raise ValueError(f"{ENV_RYW_TIMEOUT} must be a number of seconds, got {raw_timeout!r}") from None
        return cls(
            bootstrap=pick(bootstrap, ENV_BOOTSTRAP, "127.0.0.1:9092"),
            topic_prefix=pick(topic_prefix, ENV_TOPIC_PREFIX, DEFAULT_TOPIC_PREFIX),
            sink_group=pick(sink_group, ENV_SINK_GROUP, DEFAULT_SINK_GROUP),
            read_your_writes_timeout_s=timeout,
        )
