"""Exact across restarts and crashes, on the real broker and chDB: after a graceful restart of `up`, a
SIGKILL of its whole process group, and the loss of the broker's memory, sessions and per-user rollups
equal a brute-force recomputation over the traces that are stored (tests/_truth.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _truth import assert_exact, stored_traces
from _up import PARTITIONS, Conversations, Up, publish, wait_for

from tracehouse.storage import Store

pytestmark = pytest.mark.integration

MIN = 60_000


def test_up_restarted_gracefully_and_killed_keeps_sessions_and_rollups_exact(tmp_path: Path) -> None:
    """Three rounds of turns to the same 36 sessions of 12 users, with a graceful restart of `up` and a
    SIGKILL of its whole process group between them. Rounds are 40 minutes apart in event time, so a
    session left out of a round closes (30-minute gap) and a later turn reopens it."""
    up = Up(tmp_path / "data")
    talk = Conversations()
    base = int(time.time() * 1000) - 6 * 60 * MIN
    sent: set[str] = set()

    def send_round(r: int, which: list[int] | None) -> set[str]:
        events = talk.round(base + r * 40 * MIN, which)
        publish(up.bootstrap, events)
        ids = {e.trace_id for e in events}
        sent.update(ids)
        return ids

    up.start()
    first = send_round(0, None)
    wait_for(lambda: first <= up.stored_ids(), 90, "round 1 stored")
    up.stop()  # graceful: drains, marks the store consistent

    up.start()
    second = send_round(1, list(range(24)))  # 24 sessions continue, 12 wait
    wait_for(lambda: len(second & up.stored_ids()) >= len(second) // 2, 90, "round 2 partly stored")
    up.kill()
    killed_log = up.log()

    up.start()  # reconciles what the kill left, continues from the store
    third = send_round(2, list(range(12, 36)))  # 12 continue from round 2, 12 reopen after a pause
    wait_for(lambda: third <= up.stored_ids(), 90, "round 3 stored")
    restarted_log = up.log()
    up.stop()

    assert "unclean stop" not in killed_log, killed_log  # the graceful restart needed no repair
    assert "an unclean stop left sessions and rollups to repair" in restarted_log, restarted_log
    with Store(f"chdb://{tmp_path / 'data' / 'chdb'}") as store:
        stored = set(stored_traces(store))
        assert stored <= sent
        assert first | third <= stored  # everything sent while `up` was not killed
        assert_exact(store, PARTITIONS)
        turns = dict(store.query("SELECT session_id, turns FROM sessions FINAL WHERE turns > 0"))
        assert len(turns) == 36
        assert sum(turns.values()) == len(stored)
