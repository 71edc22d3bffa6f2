"""Per-user rollup buckets (one per user and UTC day) that merge exactly.

A bucket is a function of the *set* of distinct traces it has seen, so merging buckets built by
different workers, or re-adding a trace after a replay, gives exactly the bucket of the union:
interactions and errors count distinct trace ids, sessions are an exact set, response times are the
exact multiset (so p50/p95 are exact), first/last seen are min/max, tokens are sums over distinct
traces. In ClickHouse the same shape is stored as aggregate states (``uniqExact``,
``quantilesExact``, ``min``/``max``, sums) written as deltas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._facts import TraceFacts

DAY_MS = 86_400_000


def day_of(timestamp_ms: int) -> int:
    """The UTC day number (days since the epoch) of a timestamp."""
    return timestamp_ms // DAY_MS


@dataclass(slots=True)
class RollupBucket:
    user_id: str
    day: int | None  # None: the user's all-time bucket
    traces: dict[str, TraceFacts] = field(default_factory=dict)

    def add(self, facts: TraceFacts) -> bool:
        """Count one trace; ``False`` if it was already counted."""
        if facts.trace_id in self.traces:
            return False
        self.traces[facts.trace_id] = facts
        return True

    def merge(self, other: RollupBucket) -> None:
        """Merge another bucket of the same user and day into this one (exact union)."""
        if (other.user_id, other.day) != (self.user_id, self.day):
            raise ValueError("can only merge buckets of the same user and day")
        for facts in other.traces.values():
            self.add(facts)

    def summary(self) -> dict[str, object]:
        durations = sorted(f.execution_time_ms for f in self.traces.values())
        n = len(durations)
        errors = sum(f.error for f in self.traces.values())
        return {
            "user_id": self.user_id, "day": self.day, "interactions": n,
            "unique_sessions": len({f.session_id for f in self.traces.values() if f.session_id}),
            "avg_response_time_ms": sum(durations) / n if n else 0.0,
            "p50_response_time_ms": quantile(durations, 0.5), "p95_response_time_ms": quantile(durations, 0.95),
            "error_count": errors, "error_rate": errors / n if n else 0.0,
            "first_seen_ms": min((f.timestamp_ms for f in self.traces.values()), default=None),
            "last_seen_ms": max((f.timestamp_ms for f in self.traces.values()), default=None),
            "total_tokens": sum(f.total_tokens for f in self.traces.values()),
        }  # fmt: skip


def quantile(sorted_values: list[int], q: float) -> float:
    """Linear-interpolated quantile (numpy's default; ClickHouse ``quantileExactInclusive``)."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
