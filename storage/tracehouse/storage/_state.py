"""tracehouse's own small records in the store (table ``_tracehouse_state``): the broker epoch the
store was last fed from, and the point up to which sessions and rollups equal the stored traces.

Keys and what they hold:

* ``epoch``: ``{"id": <broker epoch>, "started_ms": <store clock when first seen>}``. Every trace of
  that epoch is ingested at or after ``started_ms``; every trace of an earlier epoch before it.
* ``consistent_ms``: a time (store clock) at which sessions and rollups equalled a recomputation over
  the stored traces: written after a clean drain (``tracehouse up``) and after reconciliation.

Blocking calls on a :class:`~tracehouse.storage.Store`; the newest write of a key wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import orjson

from ._store import Store

STATE_TABLE: Final = "_tracehouse_state"


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """The broker epoch the store is fed from, and when it was first seen (store clock, ms).

    ``complete``: when the epoch began, every stored session with traces had its record (the store was
    consistent, or the reconciliation reached back to its consistent point). A session id the store has
    no record for is then new: nothing stored before this epoch counts a trace of it."""

    id: str
    started_ms: int
    complete: bool = False


class StateTable:
    """Read and write ``_tracehouse_state``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, key: str) -> str | None:
        rows = self.store.query(
            f"SELECT argMax(value, version) FROM {STATE_TABLE} WHERE key = {{k:String}} GROUP BY key", {"k": key}
        )
        return str(rows[0][0]) if rows else None

    def set(self, key: str, value: str) -> None:
        self.store.insert(STATE_TABLE, [(key, value, time.time_ns())], ("key", "value", "version"),
                          settings={"insert_deduplicate": 0})  # fmt: skip

    def now_ms(self) -> int:
        """The store's clock (``ingested_at`` columns are filled by it)."""
        return int(self.store.query("SELECT toUnixTimestamp64Milli(now64(3))")[0][0])

    def epoch(self) -> EpochRecord | None:
        raw = self.get("epoch")
        if raw is None:
            return None
        value = orjson.loads(raw)
        return EpochRecord(id=str(value["id"]), started_ms=int(value["started_ms"]),
                           complete=bool(value.get("complete", False)))  # fmt: skip

    def set_epoch(self, epoch_id: str, *, complete: bool = False) -> EpochRecord:
        record = EpochRecord(id=epoch_id, started_ms=self.now_ms(), complete=complete)
        value = {"id": record.id, "started_ms": record.started_ms, "complete": record.complete}
        self.set("epoch", orjson.dumps(value).decode())
        return record

    def consistent_ms(self) -> int | None:
        raw = self.get("consistent_ms")
        return int(raw) if raw is not None else None

    def mark_consistent(self, at_ms: int | None = None) -> int:
        """Record that sessions and rollups equal the stored traces as of ``at_ms`` (default: now)."""
        at = self.now_ms() if at_ms is None else at_ms
        self.set("consistent_ms", str(at))
        return at
