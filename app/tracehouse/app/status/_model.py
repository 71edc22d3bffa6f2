"""What ``tracehouse status`` reports: plain data, graded checks, JSON in and out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Level = Literal["ok", "warn", "fail"]
_ORDER: dict[Level, int] = {"ok": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a check warns or fails (documented in docs/reliability.md)."""

    #: A consumer group this many records behind on a topic fails the check (half of it warns).
    max_lag: int = 100_000
    #: The embedded broker's resident memory: warn at this share of its limit, fail at the limit.
    broker_warn_fraction: float = 0.8


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


@dataclass(frozen=True, slots=True)
class GroupLag:
    """One consumer group's position on the topics it reads."""

    role: str
    group: str
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    level: Level
    message: str


@dataclass(slots=True)
class Status:
    """Everything ``status`` shows. ``healthy`` is false when any check failed."""

    time_ms: int
    checks: list[Check] = field(default_factory=list)
    lag: list[GroupLag] = field(default_factory=list)
    dead_letters: int | None = None
    broker: dict[str, Any] | None = None
    store: dict[str, Any] | None = None
    sdk: dict[str, Any] | None = None

    def add(self, name: str, level: Level, message: str) -> None:
        self.checks.append(Check(name, level, message))

    @property
    def level(self) -> Level:
        return max((c.level for c in self.checks), key=_ORDER.__getitem__, default="ok")

    @property
    def healthy(self) -> bool:
        return self.level != "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy, "level": self.level, "time_ms": self.time_ms,
            "checks": [asdict(c) for c in self.checks],
            "lag": [{"role": g.role, "group": g.group, "lag": g.lag, "partitions": [asdict(p) for p in g.partitions]}
                    for g in self.lag],
            "dead_letters": self.dead_letters, "broker": self.broker, "store": self.store, "sdk": self.sdk,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Status:
        return cls(
            time_ms=int(d["time_ms"]), checks=[Check(**c) for c in d.get("checks") or []],
            lag=[GroupLag(g["role"], g["group"], [PartitionLag(**p) for p in g.get("partitions") or []])
                 for g in d.get("lag") or []],
            dead_letters=d.get("dead_letters"), broker=d.get("broker"), store=d.get("store"), sdk=d.get("sdk"),
        )  # fmt: skip
