"""Retention on real chDB: raw traces, spans, tags and assessments expire after --retention-days (their
time), session records and rollups after --summary-retention-days (forever by default)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracehouse.schemas import AssessmentEvent, SessionRecord, TagSetEvent, TraceEvent
from tracehouse.storage import Retention, RowBatch, Store, current_retention, set_retention, write_batch

pytestmark = pytest.mark.integration

DAY = 86_400_000


def _fill(store: Store, ages_days: list[int]) -> None:
    now = int(time.time() * 1000)
    batch = RowBatch()
    for i, age in enumerate(ages_days):
        ts = now - age * DAY
        tid = f"tr-{i + 1:032x}"
        batch.add(TraceEvent(trace_id=tid, timestamp_ms=ts, execution_time_ms=5, state="OK",
                             metadata={"mlflow.trace.user": "u", "mlflow.trace.session": f"s{i}"},
                             tags={"k": "v"}))  # fmt: skip
        batch.add(TagSetEvent(trace_id=tid, key="later", value="x", timestamp_ns=ts * 1_000_000 + 1))
        batch.add(AssessmentEvent(assessment_id=f"a-{i + 1:032x}", trace_id=tid, name="thumbs", kind="feedback",
                                  value=True, create_time_ms=ts))  # fmt: skip
        batch.add(SessionRecord(session_id=f"s{i}", first_ms=ts, last_ms=ts, last_end_ms=ts + 5, turns=1, version=1))
    write_batch(store, batch)


def _counts(store: Store) -> dict[str, int]:
    deadline = time.monotonic() + 60
    while store.query("SELECT count() FROM system.mutations WHERE database = currentDatabase() AND NOT is_done")[0][0]:
        assert time.monotonic() < deadline, "the retention change's mutations did not finish"
        time.sleep(0.1)
    out = {}
    for table in ("traces", "spans", "trace_tags", "assessments", "sessions"):
        store.command(f"OPTIMIZE TABLE {table} FINAL")  # what ClickHouse's TTL merges do in their own time
        out[table] = int(store.query(f"SELECT count() FROM {table}")[0][0])
    return out


def test_raw_data_expires_and_summaries_stay(store: Store) -> None:
    _fill(store, [40, 10, 0])  # days old
    before = _counts(store)
    assert before["traces"] == 3
    assert set_retention(store, Retention(raw_days=30))
    assert not set_retention(store, Retention(raw_days=30))  # unchanged: nothing rewritten
    after = _counts(store)
    assert after["traces"] == 2
    assert after["trace_tags"] == before["trace_tags"] * 2 // 3
    assert after["assessments"] == 2
    assert after["sessions"] == 3  # summaries kept (summary retention 0: forever)
    set_retention(store, Retention(raw_days=7, summary_days=20))
    assert current_retention(store) == Retention(7, 20)
    final = _counts(store)
    assert final["traces"] == 1
    assert final["sessions"] == 2
    set_retention(store, Retention(raw_days=0))  # forever again: TTLs removed
    assert "TTL" not in store.query("SELECT create_table_query FROM system.tables WHERE name = 'traces'")[0][0]


def test_retention_must_keep_summaries_at_least_as_long() -> None:
    with pytest.raises(ValueError, match="summaries"):
        Retention(raw_days=30, summary_days=7)


def test_migrate_sets_and_reports_retention(tmp_path: Path) -> None:
    uri = f"chdb://{tmp_path / 'chdb'}"
    run = [sys.executable, "-m", "tracehouse.app", "migrate", "--store", uri, "--retention-days", "14"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "retention set to: raw traces 14 days, sessions and rollups forever" in out.stdout
    again = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert "retention is: raw traces 14 days" in again.stdout
    bad = subprocess.run([*run, "--summary-retention-days", "3"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "summaries cannot be kept for less time" in bad.stderr
