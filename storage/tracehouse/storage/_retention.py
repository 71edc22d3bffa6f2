"""Retention: how long ClickHouse keeps raw traces, and how long the summaries.

Raw data (``traces``, ``spans``, ``trace_tags``, ``assessments``) expires ``raw_days`` after its trace's
time (a tag's and an assessment's own time); session records and per-user rollups may be kept longer
(``summary_days``, after a session's last turn or a bucket's day). ``0`` keeps forever.

Granularity: rows past their TTL are removed when ClickHouse next merges their part (it schedules TTL
merges at least every ``merge_with_ttl_timeout``, 4 hours by default); tables are partitioned by month,
and a partition whose rows have all expired is dropped whole. So expect data to linger up to a few hours
past its day, never to go early. A change of retention is applied to the existing parts by a background
mutation (``MATERIALIZE TTL``), which ``set_retention`` starts and does not wait for.

Blocking calls on a :class:`~tracehouse.storage.Store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._state import StateTable
from ._store import Store

#: What each table's rows expire after: an expression of its columns giving a DateTime.
RAW_TTL: Final = {
    "traces": "toDateTime(intDiv(timestamp_ms, 1000))",
    "spans": "toDateTime(intDiv(timestamp_ms, 1000))",
    "trace_tags": "toDateTime(intDiv(version, 1000000000))",
    "assessments": "toDateTime(intDiv(create_time_ms, 1000))",
}
SUMMARY_TTL: Final = {
    "sessions": "toDateTime(intDiv(last_ms, 1000))",
    "user_rollups_daily": "toDateTime(day)",
}
_SETTINGS: Final = {"materialize_ttl_after_modify": 1, "mutations_sync": 0}


@dataclass(frozen=True, slots=True)
class Retention:
    """Days to keep raw data and summaries (``0``: forever)."""

    raw_days: int
    summary_days: int = 0

    def __post_init__(self) -> None:
        if self.raw_days < 0 or self.summary_days < 0:
            raise ValueError("retention days must be 0 (forever) or more")
        if self.summary_days and self.raw_days and self.summary_days < self.raw_days:
            raise ValueError("summaries cannot be kept for less time than the raw traces they summarise")

    def text(self) -> str:
        return f"raw={self.raw_days};summary={self.summary_days}"


def current_retention(store: Store) -> Retention | None:
    raw = StateTable(store).get("retention")
    if raw is None:
        return None
    parts = dict(p.split("=") for p in raw.split(";"))
    return Retention(int(parts["raw"]), int(parts["summary"]))


def _has_ttl(store: Store, table: str) -> bool:
    rows = store.query(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        {"t": table},
    )
    return bool(rows) and " TTL " in str(rows[0][0])


def set_retention(store: Store, retention: Retention) -> bool:
    """Give every table its TTL. Returns ``False`` when it already had it (nothing done)."""
    if current_retention(store) == retention:
        return False
    for tables, days in ((RAW_TTL, retention.raw_days), (SUMMARY_TTL, retention.summary_days)):
        for table, expr in tables.items():
            if days:
                store.command(f"ALTER TABLE {table} MODIFY TTL {expr} + INTERVAL {int(days)} DAY", settings=_SETTINGS)
            elif _has_ttl(store, table):
                store.command(f"ALTER TABLE {table} REMOVE TTL", settings=_SETTINGS)
    StateTable(store).set("retention", retention.text())
    return True
