"""Reconciliation on real chDB: sessions and rollups that a crash left off (records and facts of traces
that were never stored, stored traces without their record or fact) are recomputed from the stored
traces, and only what changed since the last consistent point is touched."""

from __future__ import annotations

import random
import time

import msgspec
import pytest
from _truth import StoredTrace, assert_exact, expected_sessions, mismatches, stored_traces
from test_rollups import generate

from tracehouse.schemas import TRACE_TOKEN_USAGE, SessionRecord, TraceEvent, UserTraceFact
from tracehouse.schemas.keys import resolve_identity, trace_token_usage
from tracehouse.storage import RowBatch, StateTable, Store, reconcile, write_batch

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _records(traces: dict[str, StoredTrace], version: int) -> list[SessionRecord]:
    """Correct records of the sessions of ``traces`` (as a sessionizer that saw exactly them)."""
    out = []
    for sid, want in expected_sessions(traces, PARTITIONS).items():
        out.append(SessionRecord(
            session_id=sid, first_ms=want["first_ms"], last_ms=want["last_ms"], last_end_ms=want["last_end_ms"],
            turns=want["turns"], version=version, user_ids=list(want["user_ids"]),
            total_duration_ms=want["total_duration_ms"], error_turns=want["error_turns"],
            first_request_preview=want["first_request_preview"],
            last_response_preview=want["last_response_preview"], total_tokens=want["total_tokens"],
            status=want["status"],
        ))  # fmt: skip
    return out


def _fact(t: TraceEvent, n: int) -> UserTraceFact:
    user, session = resolve_identity(t.metadata)
    assert user is not None
    i, o, total = trace_token_usage(t.metadata.get(TRACE_TOKEN_USAGE), list)
    return UserTraceFact(user_id=user, trace_id=t.trace_id, timestamp_ms=t.timestamp_ms,
                         execution_time_ms=t.execution_time_ms, src_partition=0, src_offset=n,
                         session_id=session or "", error=t.state == "ERROR", input_tokens=i, output_tokens=o,
                         total_tokens=total)  # fmt: skip


def _write(store: Store, events: list[object]) -> None:
    batch = RowBatch()
    for e in events:
        batch.add(e)  # type: ignore[arg-type]
    write_batch(store, batch, deduplicate=False)


def test_reconcile_repairs_what_a_crash_left_and_nothing_else(store: Store) -> None:
    w = generate(users=300, sessions=600, loose=150, seed=21, per=20)
    rng = random.Random(4)
    traces = sorted(w.traces.values(), key=lambda t: t.timestamp_ms)
    before, after = traces[: len(traces) // 2], traces[len(traces) // 2 :]

    # Before the consistent point: traces with exact records and facts.
    _write(store, list(before))
    _write(store, [*_records(stored_traces(store), version=1), *(_fact(t, i) for i, t in enumerate(before))])
    assert_exact(store, PARTITIONS)
    phase_one = expected_sessions(stored_traces(store), PARTITIONS)
    state = StateTable(store)
    since = state.mark_consistent()

    # After it, a crash's leftovers: 20 % of the traces never stored, yet counted by records and facts;
    # 10 % of the stored ones without a fact; some sessions without their newest record.
    lost = set(rng.sample([t.trace_id for t in after], len(after) // 5))
    _write(store, [t for t in after if t.trace_id not in lost])
    sent = {t.trace_id: t for t in traces}
    as_if_all_stored = {
        tid: StoredTrace(tid, t.timestamp_ms, t.execution_time_ms, t.state == "ERROR",
                         t.metadata["mlflow.trace.user"], t.metadata.get("mlflow.trace.session", ""),
                         t.request_preview, t.response_preview, 0, 0, 0)
        for tid, t in sent.items()
    }
    later = {t.metadata.get("mlflow.trace.session") for t in after}
    records = [r for r in _records(as_if_all_stored, version=2) if r.session_id in later]
    kept = [r for r in records if rng.random() < 0.85]
    unfacted = set(rng.sample([t.trace_id for t in after if t.trace_id not in lost], len(after) // 10))
    _write(store, [*kept, *(_fact(t, i) for i, t in enumerate(after) if t.trace_id not in unfacted)])
    # One session whose every trace was lost still has a record.
    ghost = msgspec.structs.replace(records[0], session_id="session-ghost", version=2)
    _write(store, [ghost])
    assert len(mismatches(store, PARTITIONS)) > 50

    report = reconcile(store, since, partitions=PARTITIONS)
    assert_exact(store, PARTITIONS)
    assert len(stored_traces(store)) == len(traces) - len(lost)
    assert report.sessions > 0
    assert report.buckets > 0
    # Sessions closed before the consistent point and not changed since were left as they were.
    closed_before = {sid for sid, s in phase_one.items() if s["status"] == "closed" and sid not in later}
    versions = {str(s): int(v) for s, v in store.query("SELECT session_id, max(version) FROM sessions GROUP BY 1")}
    assert closed_before
    assert all(versions[sid] == 1 for sid in closed_before)

    # Reconciling again gives the same result.
    reconcile(store, since, partitions=PARTITIONS)
    assert_exact(store, PARTITIONS)


def test_an_epoch_is_complete_only_when_every_stored_session_has_its_record(store: Store) -> None:
    """``begin_epoch`` marks the epoch complete when the store was consistent or the reconciliation
    reached its consistent point; the sessionizer then takes a session id without a record for a new
    one. Once the reconciliation window cut one short, record-less sessions are folded from their traces."""
    from tracehouse.processors.sessions._source import _ID_HASH_SQL, StoreSource, id_hash
    from tracehouse.storage import begin_epoch

    def write_in_two_moments(traces: list[TraceEvent]) -> None:  # stored without records: an unclean stop
        _write(store, list[object](traces[: len(traces) // 2]))
        time.sleep(0.05)
        _write(store, list[object](traces[len(traces) // 2 :]))

    def turns(traces: list[TraceEvent], sid: str) -> int:
        return sum(1 for t in traces if t.metadata["mlflow.trace.session"] == sid)

    assert begin_epoch(store, "e1", partitions=PARTITIONS)[0].complete  # an empty store
    source = StoreSource(store, PARTITIONS)
    generated = generate(users=20, sessions=40, loose=0, seed=5, per=5).traces.values()
    first = sorted(generated, key=lambda t: t.timestamp_ms)
    write_in_two_moments(first)
    record, report = begin_epoch(store, "e2", partitions=PARTITIONS)  # reconciles back to the consistent point
    assert report is not None
    assert record.complete
    source.epoch = record
    assert source.load(["session-never-seen"], folded_offset=-1) == []
    sid = first[0].metadata["mlflow.trace.session"]
    [state] = source.load([sid], folded_offset=-1)  # from its reconciled record
    assert state.turns == turns(first, sid)
    # New ids cost no store query: the filter of ids with a record (1 % false positives) drops them.
    recorded = sorted({t.metadata["mlflow.trace.session"] for t in first})
    assert source.maybe_recorded(recorded) == recorded
    assert len(source.maybe_recorded([f"new-session-{i}" for i in range(1000)])) <= 30
    [(sql_hash,)] = store.query(f"SELECT {_ID_HASH_SQL} FROM (SELECT {{s:String}} AS session_id)", {"s": sid})
    assert int(sql_hash) == id_hash(sid)

    second = [msgspec.structs.replace(t, trace_id=t.trace_id + "-2", metadata={
        **t.metadata, "mlflow.trace.session": t.metadata["mlflow.trace.session"] + "-2"}) for t in first]
    write_in_two_moments(second)
    record, report = begin_epoch(store, "e3", partitions=PARTITIONS, window_ms=0)  # cut short
    assert report is not None
    assert not record.complete
    sid = second[0].metadata["mlflow.trace.session"]
    store.command(f"ALTER TABLE sessions DELETE WHERE session_id = '{sid}'", settings={"mutations_sync": 2})
    source.epoch = record
    [state] = source.load([sid], folded_offset=-1)  # folded from the traces stored before the epoch
    assert state.turns == turns(second, sid)
    # Nothing changed since, and nothing was reconciled: the next epoch is still incomplete.
    record, report = begin_epoch(store, "e4", partitions=PARTITIONS)
    assert report is None
    assert not record.complete
    assert StateTable(store).epoch() == record
