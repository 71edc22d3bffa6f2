"""Kafka topic names. One place, so producers, processors and deploy files agree."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TOPIC_PREFIX = "tracehouse."


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one tracehouse installation, all sharing ``prefix``."""

    prefix: str = DEFAULT_TOPIC_PREFIX

    @property
    def traces(self) -> str:
        """Trace, tag and assessment events (NDJSON envelopes), keyed by session or trace id."""
        return f"{self.prefix}traces.v1"

    @property
    def dlq(self) -> str:
        """Events that failed to decode or validate, with the reason and origin in headers."""
        return f"{self.prefix}dlq.v1"

    @property
    def sessions(self) -> str:
        """Session records emitted by the sessionizer."""
        return f"{self.prefix}sessions.v1"

    @property
    def user_rollups(self) -> str:
        """Per-user rollup deltas emitted by the rollup processor."""
        return f"{self.prefix}user-rollups.v1"
