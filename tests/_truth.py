"""Ground truth for the recovery tests: sessions and per-user rollups recomputed by brute force from
the traces *stored* in a store, compared with what tracehouse shows (its sessions and users reads).

"Exact" in docs/reliability.md means this equality: whatever a crash cost in traces, the sessions and
rollups must agree with the traces that are stored. Nothing here shares code with the fold or the
reconciliation it checks, except Kafka's partitioner (which decides each partition's watermark).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tracehouse.query import TraceReader, list_users
from tracehouse.schemas.kafka import partition_for
from tracehouse.storage import Store

GAP_MS = 30 * 60 * 1000


@dataclass(frozen=True, slots=True)
class StoredTrace:
    trace_id: str
    timestamp_ms: int
    execution_time_ms: int
    error: bool
    user_id: str
    session_id: str
    request_preview: str
    response_preview: str
    input_tokens: int
    output_tokens: int
    total_tokens: int


def stored_traces(store: Store) -> dict[str, StoredTrace]:
    rows = store.query(
        "SELECT trace_id, timestamp_ms, execution_time_ms, state = 'ERROR', user_id, session_id, request_preview, "
        "response_preview, input_tokens, output_tokens, total_tokens FROM traces FINAL"
    )
    out: dict[str, StoredTrace] = {}
    for r in rows:
        t = StoredTrace(str(r[0]), int(r[1]), int(r[2]), bool(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]),
                        int(r[8]), int(r[9]), int(r[10]))  # fmt: skip
        assert t.trace_id not in out, f"trace {t.trace_id} stored twice"
        out[t.trace_id] = t
    return out


def _quantile(values: list[int], q: float) -> float:
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def expected_sessions(traces: dict[str, StoredTrace], partitions: int, gap_ms: int = GAP_MS
                      ) -> dict[str, dict[str, Any]]:  # fmt: skip
    watermark: dict[int, int] = {}
    sessions: dict[str, list[StoredTrace]] = {}
    for t in traces.values():
        key = t.session_id or t.user_id or t.trace_id
        p = partition_for(key.encode(), range(partitions))
        watermark[p] = max(watermark.get(p, 0), t.timestamp_ms)
        if t.session_id:
            sessions.setdefault(t.session_id, []).append(t)
    out = {}
    for sid, ts in sessions.items():
        first = min(ts, key=lambda t: (t.timestamp_ms, t.trace_id))
        last = max(ts, key=lambda t: (t.timestamp_ms, t.trace_id))
        last_end = max(t.timestamp_ms + t.execution_time_ms for t in ts)
        w = watermark[partition_for(sid.encode(), range(partitions))]
        out[sid] = {
            "turns": len(ts), "error_turns": sum(t.error for t in ts), "first_ms": first.timestamp_ms,
            "last_ms": last.timestamp_ms, "last_end_ms": last_end,
            "total_duration_ms": sum(t.execution_time_ms for t in ts),
            "first_request_preview": first.request_preview, "last_response_preview": last.response_preview,
            "user_ids": tuple(sorted({t.user_id for t in ts if t.user_id})),
            "total_tokens": sum(t.total_tokens for t in ts),
            "status": "closed" if w - last_end >= gap_ms else "open",
        }  # fmt: skip
    return out


def expected_users(traces: dict[str, StoredTrace]) -> dict[str, dict[str, Any]]:
    by_user: dict[str, list[StoredTrace]] = {}
    for t in traces.values():
        if t.user_id:
            by_user.setdefault(t.user_id, []).append(t)
    out = {}
    for user, ts in by_user.items():
        durations = sorted(t.execution_time_ms for t in ts)
        errors = sum(t.error for t in ts)
        out[user] = {
            "interactions": len(ts), "unique_sessions": len({t.session_id for t in ts if t.session_id}),
            "error_count": errors, "p50_response_time_ms": _quantile(durations, 0.5),
            "p95_response_time_ms": _quantile(durations, 0.95), "first_seen_ms": min(t.timestamp_ms for t in ts),
            "last_seen_ms": max(t.timestamp_ms for t in ts), "total_tokens": sum(t.total_tokens for t in ts),
        }  # fmt: skip
    return out


def shown_sessions(store: Store) -> dict[str, Any]:
    reader = TraceReader(store)
    got: dict[str, Any] = {}
    token = None
    while True:
        page = reader.list_sessions(max_results=500, page_token=token)
        for s in page.sessions:
            assert s.session_id not in got, f"session {s.session_id} listed twice"
            got[s.session_id] = s
        token = page.next_page_token
        if not token:
            return got


def shown_users(store: Store) -> dict[str, Any]:
    got: dict[str, Any] = {}
    token = None
    while True:
        page = list_users(store, max_results=500, page_token=token)
        for u in page.users:
            got[u.user_id] = u
        token = page.next_page_token
        if not token:
            return got


def mismatches(store: Store, partitions: int, gap_ms: int = GAP_MS) -> list[str]:
    """Every difference between what tracehouse shows and the brute force over the stored traces."""
    traces = stored_traces(store)
    problems: list[str] = []
    want_sessions = expected_sessions(traces, partitions, gap_ms)
    got_sessions = shown_sessions(store)
    for sid in sorted(set(want_sessions) | set(got_sessions)):
        want, got = want_sessions.get(sid), got_sessions.get(sid)
        if want is None or got is None:
            problems.append(f"session {sid}: {'not shown' if got is None else 'shown without stored traces'}")
            continue
        for key, value in want.items():
            if getattr(got, key) != value:
                problems.append(f"session {sid}: {key} is {getattr(got, key)!r}, stored traces say {value!r}")
    want_users = expected_users(traces)
    got_users = shown_users(store)
    for user in sorted(set(want_users) | set(got_users)):
        want_u, got_u = want_users.get(user), got_users.get(user)
        if want_u is None or got_u is None:
            problems.append(f"user {user}: {'not shown' if got_u is None else 'shown without stored traces'}")
            continue
        for key, value in want_u.items():
            actual = getattr(got_u, key)
            if actual != pytest.approx(value, rel=1e-9, abs=1e-9):
                problems.append(f"user {user}: {key} is {actual!r}, stored traces say {value!r}")
    return problems


def assert_exact(store: Store, partitions: int, gap_ms: int = GAP_MS) -> None:
    problems = mismatches(store, partitions, gap_ms)
    assert not problems, f"{len(problems)} differences, e.g.:\n" + "\n".join(problems[:20])

