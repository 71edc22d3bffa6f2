"""The embedded defaults: an in-memory Kafka broker (Tansu) for local runs and tests."""

from ._tansu import BrokerError, TansuBroker, free_port, port_open, tansu_binary

__all__ = ["BrokerError", "TansuBroker", "free_port", "port_open", "tansu_binary"]
