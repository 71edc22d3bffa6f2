"""The embedded defaults: an in-memory Kafka broker (Tansu) for local runs and tests."""

from tracehouse.schemas.errors import BrokerError

from ._admin import DEFAULT_PARTITIONS, ensure_topics
from ._tansu import TansuBroker, free_port, port_open, tansu_binary

__all__ = [
    "DEFAULT_PARTITIONS",
    "BrokerError",
    "TansuBroker",
    "ensure_topics",
    "free_port",
    "port_open",
    "tansu_binary",
]
