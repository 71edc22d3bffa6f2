"""``configure``, ``get_config``, ``flush``, ``shutdown``, ``stats``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._config import Exporter, TracehouseConfig
from ._publishers import PublisherStats
from ._runtime import RUNTIME


def configure(
    *,
    kafka_bootstrap: str | None = None,
    experiment_id: str | None = None,
    topic_prefix: str | None = None,
    enabled: bool | None = None,
    buffer_size: int | None = None,
    linger_ms: float | None = None,
    max_envelope_bytes: int | None = None,
    max_payload_chars: int | None = None,
    max_payload_items: int | None = None,
    shutdown_timeout: float | None = None,
    buffer_policy: str | None = None,
    buffer_block_timeout: float | None = None,
    replay_window: float | None = None,
    replay_max_bytes: int | None = None,
    compression: str | None = None,
    heartbeat_interval: float | None = None,
    service_name: str | None = None,
    kafka_options: Mapping[str, Any] | None = None,
    exporter: Exporter | None = None,
) -> TracehouseConfig:
    """(Re)configure the SDK and return the resolved :class:`TracehouseConfig`.

    Each value comes from its argument if given, else from its ``TRACEHOUSE_*`` environment variable,
    else from the default (arguments of earlier ``configure`` calls are not kept). Calling it is
    optional: the first traced call resolves the environment on its own. It starts the publisher (imports
    aiokafka, starts its thread and event loop; connecting happens in that thread), so call it at start-up
    and no traced call pays for that. Calling it again flushes and stops the current publisher (up to its
    ``shutdown_timeout``) before switching; counters restart.

    ``buffer_policy``: ``"drop"`` (default: a full buffer drops the new event and counts it) or
    ``"block"`` (the traced call waits for room, at most ``buffer_block_timeout`` seconds).
    ``replay_window`` / ``replay_max_bytes``: envelopes acknowledged this recently (at most this many
    bytes) are re-sent once if the broker turns out to have been replaced by an empty one.
    ``compression``: the Kafka codec (``zstd`` by default). ``heartbeat_interval``: seconds between the
    ``sdk_heartbeat`` events that report this process's counters to ``tracehouse status`` (0: none);
    ``service_name`` names the app in them.

    ``exporter``: a callable receiving each finished event dict synchronously instead of Kafka (for
    tests; see :mod:`tracehouse.producers.testing`). Raises :class:`ValueError` on invalid values.
    """
    given = {
        "kafka_bootstrap": kafka_bootstrap,
        "experiment_id": experiment_id,
        "topic_prefix": topic_prefix,
        "enabled": enabled,
        "buffer_size": buffer_size,
        "linger_ms": linger_ms,
        "max_envelope_bytes": max_envelope_bytes,
        "max_payload_chars": max_payload_chars,
        "max_payload_items": max_payload_items,
        "shutdown_timeout": shutdown_timeout,
        "buffer_policy": buffer_policy,
        "buffer_block_timeout": buffer_block_timeout,
        "replay_window": replay_window,
        "replay_max_bytes": replay_max_bytes,
        "kafka_options": kafka_options,
        "exporter": exporter,
        "compression": compression,
        "heartbeat_interval": heartbeat_interval,
        "service_name": service_name,
    }
    return RUNTIME.configure({k: v for k, v in given.items() if v is not None})


def get_config() -> TracehouseConfig:
    """The active configuration (resolved from the environment if ``configure`` was never called)."""
    return RUNTIME.ensure()


def flush(timeout: float | None = None) -> bool:
    """Block until every event recorded before the call has been acknowledged by Kafka (or given up
    on: see :func:`stats`). Returns ``False`` if ``timeout`` seconds passed first (e.g. the broker is
    unreachable); ``None`` waits without limit. Starts nothing when nothing was recorded."""
    return RUNTIME.flush(timeout)


def shutdown(timeout: float | None = 5.0) -> bool:
    """Flush (up to ``timeout`` seconds), then stop the publisher thread and its Kafka producer.

    Events recorded afterwards are dropped until :func:`configure` is called again. Runs
    automatically at interpreter exit once something was published. Returns ``True`` if the flush
    completed."""
    return RUNTIME.shutdown(timeout)


def stats() -> PublisherStats:
    """Event counters of the current publisher: accepted, published (acknowledged), dropped (buffer
    full / after shutdown), failed (given up on), buffered (pending)."""
    return RUNTIME.stats()
