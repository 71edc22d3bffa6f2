"""The embedded broker's memory, watched: Tansu keeps every byte it was sent in memory, for as long as it
runs (no retention, no DeleteRecords), so ``tracehouse up`` must not let it grow until the machine
runs out.

The policy (docs/reliability.md): at ``warn_fraction`` of the limit ``up`` logs a warning once; at the
limit it starts a **new broker generation**: writes through the HTTP gateway pause (503 with
``Retry-After``), the processors drain everything the broker holds into the store, the broker is
replaced by an empty one on the same port (a new epoch), the processors start again and continue from
the store, and writes resume. SDKs reconnect by themselves and send again what the old broker
acknowledged in its last moments. ``status`` shows the memory, the limit and the generations so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("tracehouse.up")

State = Literal["ok", "warn", "limit"]
#: A generation younger than this is not replaced (a limit below the broker's own footprint must not
#: make ``up`` replace it in a loop).
MIN_GENERATION_AGE_S = 10.0


def rss_mib(pid: int) -> float | None:
    """The resident memory of process ``pid`` in MiB, ``None`` when it is gone."""
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except (psutil.Error, OSError):
        return None


@dataclass(slots=True)
class BrokerMemory:
    """Samples the broker's resident memory and says when to warn and when to act."""

    pid: Callable[[], int | None]
    limit_mib: float
    warn_fraction: float = 0.8
    rss: float | None = None
    peak: float = 0.0
    state: State = "ok"
    rollovers: int = 0
    last_rollover_ms: int | None = None
    _warned: bool = False
    _born: float = 0.0

    def __post_init__(self) -> None:
        self._born = time.monotonic()

    @property
    def warn_mib(self) -> float:
        return self.limit_mib * self.warn_fraction

    def check(self) -> State:
        """Sample now; log the first crossing of the warning level (and of the limit)."""
        pid = self.pid()
        self.rss = rss_mib(pid) if pid is not None else None
        if self.rss is None:
            return self.state
        self.peak = max(self.peak, self.rss)
        if self.limit_mib and self.rss >= self.limit_mib:
            young = time.monotonic() - self._born < MIN_GENERATION_AGE_S
            if young and self.state != "limit" and self.rollovers:
                log.error("the new broker generation already holds %.0f MiB, over its %.0f MiB limit: raise "
                          "--broker-memory-limit-mb", self.rss, self.limit_mib)  # fmt: skip
            self.state = "limit"
            if young:
                return "warn"
        elif self.limit_mib and self.rss >= self.warn_mib:
            self.state = "warn"
            if not self._warned:
                self._warned = True
                log.warning("the embedded broker holds %.0f MiB, %.0f%% of its %.0f MiB limit: at the limit a new "
                            "broker generation starts (writes pause for a few seconds)",
                            self.rss, 100 * self.rss / self.limit_mib, self.limit_mib)  # fmt: skip
        else:
            self.state = "ok"
        return self.state

    def rolled_over(self) -> None:
        self.rollovers += 1
        self.last_rollover_ms = int(time.time() * 1000)
        self._born = time.monotonic()
        self._warned = False
        self.state = "ok"

    def sample(self) -> dict[str, Any]:
        """What ``status`` shows."""
        return {
            "pid": self.pid(), "rss_mib": None if self.rss is None else round(self.rss, 1),
            "peak_mib": round(self.peak, 1), "limit_mib": self.limit_mib, "warn_mib": round(self.warn_mib, 1),
            "state": self.state, "rollovers": self.rollovers, "last_rollover_ms": self.last_rollover_ms,
            "policy": "new broker generation at the limit (writes pause, processors drain, SDKs resend)",
        }  # fmt: skip
