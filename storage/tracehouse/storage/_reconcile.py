"""Reconciliation: make sessions and per-user rollups equal a recomputation over the stored traces.

The stream keeps sessions and rollups exact while it runs. A crash can leave them off by what was in
flight: a session record or a rollup fact may count a trace the broker lost before the sink stored it,
or a stored trace may lack its record and fact. The stored traces are the truth (the sink stores each
trace id once), so after an unclean stop everything that changed since the last consistent point is
recomputed from them:

1. **sessions**: every session with a trace or a record ingested since then is recomputed from all
   its stored traces, and every open session's status is recomputed; the new record gets a newer
   version than any before it (the newest version wins). A record whose traces were all lost keeps
   ``turns = 0`` (reads skip it).
2. **rollups**: the ``(user, day)`` buckets with a trace or a fact since then are deleted and rebuilt
   from the stored traces by the same aggregation the view applies to facts.

A session's status depends on its partition's event-time watermark, recomputed here as the sessionizer
computes it: the newest trace timestamp among the stored traces of the partition (Kafka's partitioner
over the trace's session, else user, else trace id).

Inferred sessions (``--infer-sessions``) have no id in the stored traces: they are left as they are,
and a reconciled bucket counts only explicit sessions among its ``unique_sessions``.

Blocking calls on a :class:`~tracehouse.storage.Store`: run it when nothing else writes sessions or
rollups (``tracehouse up`` runs it before starting its processors; the sink when it meets a new epoch).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tracehouse.schemas.kafka import partition_for

from ._rows import SESSION_COLUMNS, UINT64_MAX
from ._state import EpochRecord, StateTable
from ._store import Store

log = logging.getLogger("tracehouse.reconcile")

_CHUNK: Final = 5_000
_MUTATION: Final = {"mutations_sync": 2}
#: Same bound as the facts the sessionizer emits (``UserTraceFact.user_id``).
_MAX_ID: Final = 250


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one reconciliation recomputed."""

    since_ms: int
    sessions: int
    buckets: int
    seconds: float


def version_at(now_ms: int) -> int:
    """A session record version that is newer than any written before ``now_ms`` (the sessionizer's
    versions follow the same clock: see ``sessions._emit``)."""
    return now_ms * 1000 + 999


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def partition_watermarks(store: Store, partitions: int, *, before_ms: int | None = None) -> dict[int, int]:
    """The newest stored trace timestamp of each ``traces.v1`` partition (partitions without traces are
    absent), among the traces ingested before ``before_ms`` if given. Looks back from the newest trace,
    widening the window until every partition is found."""
    ingested = "1" if before_ms is None else f"ingested_at < fromUnixTimestamp64Milli({int(before_ms)})"
    top = store.query(f"SELECT max(timestamp_ms), min(timestamp_ms), count() FROM traces WHERE {ingested}")[0]
    if not top[2]:
        return {}
    newest, oldest = int(top[0]), int(top[1])
    marks: dict[int, int] = {}
    window = 3_600_000
    while True:
        lower = newest - window
        rows = store.query(
            "SELECT if(session_id != '', session_id, if(user_id != '', user_id, trace_id)) AS key, "
            f"max(timestamp_ms) FROM traces WHERE timestamp_ms >= {{lo:Int64}} AND {ingested} GROUP BY key",
            {"lo": lower},
        )
        for key, ts in rows:
            p = partition_for(str(key).encode(), range(partitions))
            marks[p] = max(marks.get(p, 0), int(ts))
        if len(marks) == partitions or lower <= oldest:
            return marks
        window *= 8


def _closed(last_end: int, first: int, watermark: int, gap: int, max_duration: int | None) -> bool:
    if watermark - last_end >= gap:
        return True
    return max_duration is not None and last_end - first >= max_duration


def touched_sessions(store: Store, since_ms: int) -> list[str]:
    """Sessions with a trace or a (non-inferred) record ingested since ``since_ms``, and every session
    whose newest record is open."""
    rows = store.query(
        "SELECT DISTINCT session_id FROM traces WHERE ingested_at >= fromUnixTimestamp64Milli({s:Int64}) "
        "AND session_id != '' "
        "UNION DISTINCT SELECT session_id FROM sessions WHERE ingested_at >= fromUnixTimestamp64Milli({s:Int64}) "
        "AND inferred = 0 "
        "UNION DISTINCT SELECT session_id FROM sessions FINAL WHERE status = 'open' AND inferred = 0",
        {"s": since_ms},
    )
    return sorted(str(r[0]) for r in rows)


def recompute_sessions(store: Store, session_ids: Sequence[str], *, partitions: int, inactivity_gap_ms: int,
                       max_duration_ms: int | None) -> int:  # fmt: skip
    """Rewrite the records of ``session_ids`` from their stored traces. Returns how many were written."""
    if not session_ids:
        return 0
    marks = partition_watermarks(store, partitions)
    version = version_at(int(store.query("SELECT toUnixTimestamp64Milli(now64(3))")[0][0]))
    written = 0
    for chunk in _chunks(session_ids):
        stored = {
            str(r[0]): (str(r[1]), bool(r[2]))
            for r in store.query(
                "SELECT session_id, argMax(experiment_id, version), argMax(inferred, version) FROM sessions "
                "WHERE session_id IN {ids:Array(String)} GROUP BY session_id",
                {"ids": list(chunk)},
            )
        }
        aggregates = {
            str(r[0]): r
            for r in store.query(
                "SELECT session_id, argMin(experiment_id, (timestamp_ms, trace_id)), "
                "arraySort(groupUniqArrayIf(user_id, user_id != '' AND length(user_id) <= 250)), "
                "min(timestamp_ms), max(timestamp_ms), max(timestamp_ms + execution_time_ms), count(), "
                "countIf(state = 'ERROR'), sum(execution_time_ms), "
                "argMin(request_preview, (timestamp_ms, trace_id)), "
                "argMax(response_preview, (timestamp_ms, trace_id)), "
                "sum(input_tokens), sum(output_tokens), sum(total_tokens), "
                "argMin(trace_id, (timestamp_ms, trace_id)), argMax(trace_id, (timestamp_ms, trace_id)) "
                "FROM traces FINAL WHERE session_id IN {ids:Array(String)} GROUP BY session_id",
                {"ids": list(chunk)},
            )
        }
        rows = []
        for sid in chunk:
            experiment, inferred = stored.get(sid, ("", False))
            if inferred:
                continue
            agg = aggregates.get(sid)
            if agg is None:
                if sid in stored:  # every trace it counted was lost: keep the id, count nothing
                    rows.append(_empty_row(sid, experiment, version))
                continue
            (_, first_exp, users, first, last, last_end, turns, errors, duration, request, response,
             inp, out, total, first_id, last_id) = agg  # fmt: skip
            p = partition_for(sid.encode(), range(partitions))
            closed = _closed(int(last_end), int(first), marks.get(p, 0), inactivity_gap_ms, max_duration_ms)
            user_ids = [str(u) for u in users]
            rows.append((
                sid, experiment or str(first_exp), user_ids[0] if user_ids else "", user_ids, int(first), int(last),
                int(last_end), int(turns), int(errors), min(int(duration), UINT64_MAX), str(request), str(response),
                int(inp), int(out), int(total), "closed" if closed else "open", 0, version, str(first_id),
                str(last_id), "",
            ))  # fmt: skip
        store.insert("sessions", rows, SESSION_COLUMNS, settings={"insert_deduplicate": 0})
        written += len(rows)
    return written


def _empty_row(sid: str, experiment: str, version: int) -> tuple[Any, ...]:
    return (sid, experiment or "0", "", [], 0, 0, 0, 0, 0, 0, "", "", 0, 0, 0, "closed", 0, version, "", "", "")


def touched_buckets(store: Store, since_ms: int) -> tuple[list[str], list[int]]:
    """Users and UTC days (days since 1970-01-01) with a stored trace or a rollup change since ``since_ms``."""
    rows = store.query(
        "SELECT user_id, toInt64(intDiv(timestamp_ms, 86400000)) FROM traces "
        "WHERE ingested_at >= fromUnixTimestamp64Milli({s:Int64}) AND user_id != '' "
        "UNION DISTINCT SELECT user_id, toInt64(toRelativeDayNum(day) - toRelativeDayNum(toDate32('1970-01-01'))) "
        "FROM user_rollups_daily WHERE updated_at >= fromUnixTimestamp64Milli({s:Int64})",
        {"s": since_ms},
    )
    return sorted({str(r[0]) for r in rows}), sorted({int(r[1]) for r in rows})


_DAY = "addDays(toDate32('1970-01-01'), toInt32(intDiv(timestamp_ms, 86400000)))"


def _in_buckets(day: str) -> str:
    return f"user_id IN {{users:Array(String)}} AND {day} IN {{days:Array(Date32)}}"


def recompute_buckets(store: Store, users: Sequence[str], days: Sequence[int]) -> int:
    """Rebuild the rollup buckets of ``users`` x ``days`` from the stored traces (the aggregation of
    ``user_rollups_daily_mv``, over ``traces`` instead of facts). Returns the buckets written."""
    if not users or not days:
        return 0

    dates = [datetime.date(1970, 1, 1) + datetime.timedelta(days=d) for d in days]
    written = 0
    for chunk in _chunks(users):
        params = {"users": list(chunk), "days": dates}
        store.command(
            f"ALTER TABLE user_rollups_daily DELETE WHERE {_in_buckets('day')}", params, settings=_MUTATION
        )
        store.command(
            "INSERT INTO user_rollups_daily (experiment_id, user_id, day, interactions, error_count, "
            "total_duration_ms, sessions, durations, first_seen_ms, last_seen_ms, input_tokens, output_tokens, "
            "total_tokens) "
            f"SELECT experiment_id, user_id, {_DAY} AS d, toUInt64(count()), toUInt64(countIf(state = 'ERROR')), "
            "toUInt64(sum(execution_time_ms)), uniqExactStateIf(session_id, session_id != ''), "
            "quantilesExactInclusiveState(0.5, 0.95)(execution_time_ms), min(timestamp_ms), max(timestamp_ms), "
            "sum(input_tokens), sum(output_tokens), sum(total_tokens) "
            f"FROM traces FINAL WHERE user_id != '' AND length(user_id) <= {_MAX_ID} "
            f"AND {_in_buckets(_DAY)} GROUP BY experiment_id, user_id, d",
            params,
            settings={"insert_deduplicate": 0},
        )
        written += int(
            store.query(
                f"SELECT count() FROM (SELECT DISTINCT experiment_id, user_id, day FROM user_rollups_daily "
                f"WHERE {_in_buckets('day')})",
                params,
            )[0][0]
        )
    return written


def reconcile(store: Store, since_ms: int, *, partitions: int, inactivity_gap_ms: int = 30 * 60 * 1000,
              max_duration_ms: int | None = None) -> ReconcileReport:  # fmt: skip
    """Recompute every session and rollup bucket changed since ``since_ms`` (store clock) from the
    stored traces. Idempotent."""
    started = time.monotonic()
    sessions = recompute_sessions(store, touched_sessions(store, since_ms), partitions=partitions,
                                  inactivity_gap_ms=inactivity_gap_ms, max_duration_ms=max_duration_ms)  # fmt: skip
    users, days = touched_buckets(store, since_ms)
    buckets = recompute_buckets(store, users, days)
    report = ReconcileReport(since_ms=since_ms, sessions=sessions, buckets=buckets,
                             seconds=time.monotonic() - started)  # fmt: skip
    log.info("reconciled %d sessions and %d rollup buckets changed since %d in %.1fs",
             sessions, buckets, since_ms, report.seconds)  # fmt: skip
    return report


def _latest_change_ms(store: Store) -> int | None:
    """When sessions, rollups or traces last changed (store clock), ``None`` for an empty store."""
    row = store.query(
        "SELECT greatest((SELECT max(toUnixTimestamp64Milli(ingested_at)) FROM traces), "
        "(SELECT max(toUnixTimestamp64Milli(ingested_at)) FROM sessions), "
        "(SELECT max(toUnixTimestamp64Milli(updated_at)) FROM user_rollups_daily))"
    )[0]
    latest = int(row[0]) if row[0] is not None else 0
    return latest or None


def _earliest_change_ms(store: Store) -> int:
    """When the store's traces and sessions were first written (store clock)."""
    row = store.query(
        "SELECT least((SELECT min(toUnixTimestamp64Milli(ingested_at)) FROM traces), "
        "(SELECT min(toUnixTimestamp64Milli(ingested_at)) FROM sessions))"
    )[0]
    return int(row[0] or 0)


def begin_epoch(store: Store, epoch_id: str, *, partitions: int, inactivity_gap_ms: int = 30 * 60 * 1000,
                max_duration_ms: int | None = None, window_ms: int = 3_600_000
                ) -> tuple[EpochRecord, ReconcileReport | None]:  # fmt: skip
    """Register ``epoch_id`` as the epoch the store is fed from. When it is new and anything changed
    since the last consistent point (an unclean stop), reconcile first: at most ``window_ms`` back from
    the latest change, or from the consistent point if that is later. The epoch is ``complete`` (every
    stored session has its record) unless that window cut the reconciliation short. Returns the epoch
    record and the report of the reconciliation, if one ran. Idempotent for the current epoch."""
    state = StateTable(store)
    current = state.epoch()
    if current is not None and current.id == epoch_id:
        return current, None
    report = None
    consistent = state.consistent_ms()
    latest = _latest_change_ms(store)
    # Complete stays complete only through full reconciliations; a store never fed before is complete.
    complete = current.complete if current is not None else latest is None
    if latest is not None and (consistent is None or latest >= consistent):
        since = latest - window_ms if consistent is None else max(consistent, latest - window_ms)
        report = reconcile(store, since, partitions=partitions, inactivity_gap_ms=inactivity_gap_ms,
                           max_duration_ms=max_duration_ms)  # fmt: skip
        if consistent is None:  # the whole history was reconciled, or not
            complete = _earliest_change_ms(store) >= since
        elif since != consistent:
            complete = False
        if not complete:
            log.warning("the reconciliation reached back %d s, not to the last consistent point: sessions "
                        "older than that are read back from their traces when they continue", window_ms // 1000)
    state.mark_consistent()
    record = state.set_epoch(epoch_id, complete=complete)
    log.info("store now fed from broker epoch %s", epoch_id)
    return record, report
