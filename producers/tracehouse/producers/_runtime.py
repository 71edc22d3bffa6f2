"""The process-wide SDK state: the active configuration and the publisher events go to.

Resolved lazily on the first traced call (never at import), replaced by ``configure()``.
``configure()`` starts the Kafka publisher's thread at once (its imports done in the calling thread),
so no traced call pays for it; without ``configure()`` the thread starts with the first event and
does its imports itself. Once it runs, the ``atexit`` flush and the ``os.register_at_fork`` reset are
installed (once per process).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from ._config import TracehouseConfig, resolve_config
from ._kafka_logs import forget_threads
from ._publisher import KafkaPublisher
from ._publishers import ExporterPublisher, NullPublisher, Publisher, PublisherStats
from ._record import TraceRecord
from ._serialize import set_limits

_log = logging.getLogger("tracehouse")


class Runtime:
    """Holds the configuration and the publisher. One instance: :data:`RUNTIME`."""

    __slots__ = ("_hooks_installed", "_lock", "config", "enabled", "publisher")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        #: ``None`` until resolved (first traced call or ``configure()``).
        self.config: TracehouseConfig | None = None
        #: Hot-path flag: ``None`` until resolved.
        self.enabled: bool | None = None
        self.publisher: Publisher | None = None
        self._hooks_installed = False

    @property
    def sink(self) -> Publisher | None:
        """Alias of :attr:`publisher` (its name before the layout change)."""
        return self.publisher

    def ensure(self) -> TracehouseConfig:
        """The configuration, resolved from the environment on first use. Never raises."""
        config = self.config
        if config is not None:
            return config
        with self._lock:
            if self.config is None:
                try:
                    config = resolve_config()
                except Exception:  # pragma: no cover - resolve_config only raises on bad overrides
                    _log.warning(
                        "tracehouse: could not read the configuration; using defaults", exc_info=True
                    )
                    config = TracehouseConfig()
                self._install(config)
            assert self.config is not None
            return self.config

    def configure(self, overrides: Mapping[str, Any]) -> TracehouseConfig:
        """Resolve a new configuration and switch to it, flushing and stopping the old publisher first."""
        config = resolve_config(overrides)
        with self._lock:
            old, old_config = self.publisher, self.config
            if old is not None:
                old.shutdown(old_config.shutdown_timeout if old_config is not None else 5.0)
            self._install(config, start=True)
        return config

    def _install(self, config: TracehouseConfig, start: bool = False) -> None:
        set_limits(config.max_payload_chars, config.max_payload_items)
        publisher = self._make_publisher(config)
        self.publisher = publisher
        self.config = config
        self.enabled = config.enabled
        if start:
            publisher.start()

    def _make_publisher(self, config: TracehouseConfig) -> Publisher:
        if not config.enabled:
            return NullPublisher()
        if config.exporter is not None:
            return ExporterPublisher(config.exporter)
        return KafkaPublisher(config, on_start=self._publisher_started)

    # -- used by the API -----------------------------------------------------------------------------

    def submit(self, item: dict[str, Any] | TraceRecord) -> None:
        """Hand one event to the publisher. Never raises."""
        publisher = self.publisher
        if publisher is None:
            self.ensure()
            publisher = self.publisher
        if publisher is not None:
            publisher.submit(item)

    def flush(self, timeout: float | None) -> bool:
        publisher = self.publisher
        return True if publisher is None else publisher.flush(timeout)

    def shutdown(self, timeout: float | None) -> bool:
        with self._lock:
            publisher = self.publisher
        return True if publisher is None else publisher.shutdown(timeout)

    def stats(self) -> PublisherStats:
        publisher = self.publisher
        return PublisherStats() if publisher is None else publisher.stats()

    # -- process hooks -------------------------------------------------------------------------------

    def _publisher_started(self) -> None:
        with self._lock:
            if self._hooks_installed:
                return
            self._hooks_installed = True
        atexit.register(self._at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _at_exit(self) -> None:
        config, publisher = self.config, self.publisher
        if publisher is not None:
            try:
                publisher.shutdown(config.shutdown_timeout if config is not None else 5.0)
            except Exception:  # pragma: no cover
                _log.debug("tracehouse: shutdown at exit failed", exc_info=True)

    def _after_fork_in_child(self) -> None:
        """The child has no publisher thread: give it a fresh, unstarted publisher. Events still buffered
        belong to the parent, which publishes them."""
        self._lock = threading.RLock()
        forget_threads()
        config = self.config
        if config is not None and self.publisher is not None:
            self.publisher = self._make_publisher(config)


RUNTIME = Runtime()
