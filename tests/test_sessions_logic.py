"""Property tests: session and rollup state equal a brute-force computation whatever the order,
duplication and splitting of the input."""

from __future__ import annotations

import statistics

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.processors.sessions import (
    RollupBucket,
    SessionConfig,
    SessionState,
    TraceFacts,
    apply,
    close,
    close_due,
    day_of,
    facts_from_line,
    new_session,
    quantile,
)
from tracehouse.schemas import example

T0 = 1_795_000_000_000

facts_st = st.builds(
    TraceFacts,
    trace_id=st.integers(0, 40).map(lambda i: f"tr-{i:032x}"),
    timestamp_ms=st.integers(T0, T0 + 3 * 86_400_000),
    execution_time_ms=st.integers(0, 60_000),
    error=st.booleans(),
    user_id=st.sampled_from(["u1", "u2", None]),
    session_id=st.just("s1"),
    request_preview=st.text(max_size=5),
    response_preview=st.text(max_size=5),
    input_tokens=st.integers(0, 500),
    output_tokens=st.integers(0, 500),
    total_tokens=st.integers(0, 1000),
)


def consistent(traces: list[TraceFacts]) -> list[TraceFacts]:
    """A real trace id always carries the same facts: keep the first facts per id."""
    seen: dict[str, TraceFacts] = {}
    for f in traces:
        seen.setdefault(f.trace_id, f)
    return [seen[f.trace_id] for f in traces]


def fold(traces: list[TraceFacts]) -> SessionState:
    state = new_session(traces[0], "s1")
    for f in traces:
        apply(state, f)
    return state


def brute_force(traces: list[TraceFacts]) -> dict[str, object]:
    distinct = list({f.trace_id: f for f in traces}.values())
    first = min(distinct, key=lambda f: (f.timestamp_ms, f.trace_id))
    last = max(distinct, key=lambda f: (f.timestamp_ms, f.trace_id))
    return {
        "first_ms": min(f.timestamp_ms for f in distinct),
        "last_ms": max(f.timestamp_ms for f in distinct),
        "last_end_ms": max(f.timestamp_ms + f.execution_time_ms for f in distinct),
        "turns": len(distinct),
        "total_duration_ms": sum(f.execution_time_ms for f in distinct),
        "error_turns": sum(f.error for f in distinct),
        "user_ids": sorted({f.user_id for f in distinct if f.user_id}),
        "first_request_preview": first.request_preview,
        "last_response_preview": last.response_preview,
        "total_tokens": sum(f.total_tokens for f in distinct),
        "input_tokens": sum(f.input_tokens for f in distinct),
    }


def comparable(state: SessionState) -> dict[str, object]:
    record = state.record()
    return {k: record[k] for k in brute_force([TraceFacts("tr-x", 0, 0, False)])}


@settings(max_examples=300, deadline=None)
@given(st.lists(facts_st, min_size=1, max_size=30), st.randoms())
def test_session_equals_brute_force_under_duplicates_and_reordering(traces: list[TraceFacts], rnd: object) -> None:
    traces = consistent(traces)
    expected = brute_force(traces)
    assert comparable(fold(traces)) == expected
    shuffled = traces + traces[: len(traces) // 2]  # re-delivered duplicates
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert comparable(fold(shuffled)) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(facts_st, min_size=2, max_size=20))
def test_late_turn_after_close_reopens_the_same_record(traces: list[TraceFacts]) -> None:
    traces = consistent(traces)
    config = SessionConfig(inactivity_gap_ms=30 * 60_000)
    *early, late = traces
    state = fold(early)
    now = state.last_end_ms + config.inactivity_gap_ms
    assert close_due(state, now, config)
    assert not close_due(state, now - 1, config)
    close(state)
    assert state.status == "closed"
    closed_version = state.version
    changed = apply(state, late)
    assert changed == (late.trace_id not in {f.trace_id for f in early})
    assert state.session_id == "s1"
    if changed:
        assert state.record()["status"] == "open"
        assert state.version > closed_version
    assert comparable(state) == brute_force(traces)


def test_max_duration_closes_a_long_session() -> None:
    config = SessionConfig(inactivity_gap_ms=10**9, max_duration_ms=60_000)
    state = new_session(TraceFacts("tr-a", T0, 10, False), "s")
    apply(state, TraceFacts("tr-a", T0, 10, False))
    assert not close_due(state, T0 + 20, config)
    apply(state, TraceFacts("tr-b", T0 + 70_000, 10, False))
    assert close_due(state, T0 + 70_011, config)


def brute_rollup(traces: list[TraceFacts]) -> dict[str, object]:
    distinct = list({f.trace_id: f for f in traces}.values())
    durations = [f.execution_time_ms for f in distinct]
    return {
        "interactions": len(distinct),
        "unique_sessions": len({f.session_id for f in distinct if f.session_id}),
        "avg_response_time_ms": statistics.fmean(durations),
        "p50_response_time_ms": float(np.percentile(durations, 50)),
        "p95_response_time_ms": float(np.percentile(durations, 95)),
        "error_count": sum(f.error for f in distinct),
        "first_seen_ms": min(f.timestamp_ms for f in distinct),
        "last_seen_ms": max(f.timestamp_ms for f in distinct),
        "total_tokens": sum(f.total_tokens for f in distinct),
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(facts_st.map(lambda f: TraceFacts(**{**{k: getattr(f, k) for k in f.__struct_fields__},
                                                     "session_id": f"s{f.execution_time_ms % 3}"})),
                min_size=1, max_size=40),
       st.integers(1, 4), st.randoms())  # fmt: skip
def test_rollups_merge_exactly_across_workers_and_replays(traces: list[TraceFacts], workers: int, rnd: object) -> None:
    traces = consistent(traces)
    # Each worker sees an arbitrary share of the traces, some more than once (replays).
    buckets = [RollupBucket("u", None) for _ in range(workers)]
    for f in traces + traces[: len(traces) // 3]:
        buckets[rnd.randrange(workers)].add(f)  # type: ignore[attr-defined]
    merged = RollupBucket("u", None)
    for b in buckets:
        merged.merge(b)
    summary = merged.summary()
    expected = brute_rollup(traces)
    for key, value in expected.items():
        got = summary[key]
        assert got == value if isinstance(value, int) else abs(float(got) - float(value)) < 1e-6, key  # type: ignore[arg-type]


@given(st.lists(facts_st, min_size=1, max_size=40))
def test_daily_buckets_sum_to_the_overall_bucket(traces: list[TraceFacts]) -> None:
    traces = consistent(traces)
    overall = RollupBucket("u", None)
    daily: dict[int, RollupBucket] = {}
    for f in traces:
        overall.add(f)
        daily.setdefault(day_of(f.timestamp_ms), RollupBucket("u", day_of(f.timestamp_ms))).add(f)
    assert sum(int(b.summary()["interactions"]) for b in daily.values()) == overall.summary()["interactions"]  # type: ignore[call-overload]


def test_quantile_matches_numpy() -> None:
    values = [5, 1, 9, 3, 7, 2]
    for q in (0.0, 0.5, 0.95, 1.0):
        assert quantile(sorted(values), q) == float(np.percentile(values, q * 100))


def test_facts_are_read_without_spans() -> None:
    facts = facts_from_line(example("trace"))
    assert facts is not None
    assert (facts.user_id, facts.session_id) == ("user-123", "session-abc-456")
    assert (facts.input_tokens, facts.output_tokens, facts.total_tokens) == (42, 17, 59)
    assert facts_from_line(example("tag_set")) is None
    aliased = facts_from_line(example("trace_error"))
    assert aliased is not None
    assert (aliased.user_id, aliased.session_id, aliased.error) == ("user-9", "conv-9", True)


def test_state_ships_as_a_valid_session_record() -> None:
    from tracehouse.schemas import SessionRecord, decode_event, encode_event

    state = new_session(TraceFacts("tr-a", T0, 10, True, user_id="u1", session_id="s"), "s")
    apply(state, TraceFacts("tr-a", T0, 10, True, user_id="u1", session_id="s", request_preview="hi"))
    record = decode_event(encode_event(state.to_record()))
    assert isinstance(record, SessionRecord)
    assert (record.session_id, record.turns, record.error_turns, record.user_ids) == ("s", 1, 1, ["u1"])
