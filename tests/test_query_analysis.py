"""Per-user summaries and session timelines, computed in ClickHouse, against a Python computation."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import orjson
import pytest

from tracehouse.query import (
    InvalidPageTokenError,
    SessionTimeline,
    TraceReader,
    TraceState,
    UserSummary,
    session_timeline,
    user_summary,
)
from tracehouse.schemas import TraceEvent
from tracehouse.storage import RowBatch, Store, migrate, write_batch

BASE_MS = 1_795_000_000_000
USERS = [f"u{i}" for i in range(8)]
BIG_SESSION = "big-session"
BIG_TURNS = 1200


def build() -> tuple[list[TraceEvent], list[TraceEvent]]:
    rng = random.Random(7)
    events: list[TraceEvent] = []
    for i in range(400):
        user = rng.choice(USERS)
        session = rng.choice([f"{user}-s{k}" for k in range(4)] + [None])
        metadata = {"mlflow.trace.user": user}
        if session:
            metadata["mlflow.trace.session"] = session
        if rng.random() < 0.7:
            usage = {"input_tokens": rng.randrange(100), "output_tokens": rng.randrange(100)}
            usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
            metadata["mlflow.trace.tokenUsage"] = orjson.dumps(usage).decode()
        events.append(TraceEvent(
            trace_id=f"tr-{rng.getrandbits(128):032x}", timestamp_ms=BASE_MS + rng.randrange(10**7),
            execution_time_ms=rng.randrange(1, 3000), state=rng.choice(["OK", "OK", "OK", "ERROR"]),
            experiment_id=rng.choice(["0", "1"]), metadata=metadata,
            request_preview=f"question {i}", response_preview=f"answer {i}",
        ))
    for turn in range(BIG_TURNS):  # a long conversation; three turns share each timestamp
        events.append(TraceEvent(
            trace_id=f"tr-{rng.getrandbits(128):032x}", timestamp_ms=BASE_MS + turn // 3 * 1000,
            execution_time_ms=5, state="OK", experiment_id="0",
            metadata={"mlflow.trace.user": "heavy", "mlflow.trace.session": BIG_SESSION},
        ))
    return events, [e for e in events if rng.random() < 0.25]


EVENTS, REPLAYED = build()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(f"chdb://{tmp_path_factory.mktemp('query-analysis') / 'chdb'}")
    migrate(s)
    for token, events in (("a", EVENTS), ("b", REPLAYED)):
        batch = RowBatch()
        for e in events:
            batch.add(e)
        write_batch(s, batch, token=token)
    try:
        yield s
    finally:
        s.close()


def expected_summary(user: str, experiments: set[str] | None = None) -> UserSummary:
    mine = [e for e in EVENTS if e.metadata.get("mlflow.trace.user") == user
            and (experiments is None or e.experiment_id in experiments)]
    times = np.array([e.execution_time_ms for e in mine], dtype=float)
    usages = [orjson.loads(e.metadata["mlflow.trace.tokenUsage"]) for e in mine
              if "mlflow.trace.tokenUsage" in e.metadata]
    errors = sum(e.state == "ERROR" for e in mine)
    return UserSummary(
        user_id=user,
        total_traces=len(mine),
        unique_sessions=len({e.metadata["mlflow.trace.session"] for e in mine
                             if "mlflow.trace.session" in e.metadata}),
        avg_response_time_ms=float(times.mean()),
        p50_response_time_ms=float(np.percentile(times, 50)),
        p95_response_time_ms=float(np.percentile(times, 95)),
        error_count=errors,
        error_rate=errors / len(mine),
        first_seen_ms=min(e.timestamp_ms for e in mine),
        last_seen_ms=max(e.timestamp_ms for e in mine),
        input_tokens=sum(u["input_tokens"] for u in usages),
        output_tokens=sum(u["output_tokens"] for u in usages),
        total_tokens=sum(u["total_tokens"] for u in usages),
    )


def _close(got: UserSummary, want: UserSummary) -> None:
    for name in UserSummary.__dataclass_fields__:
        g, w = getattr(got, name), getattr(want, name)
        if isinstance(w, float):
            assert g == pytest.approx(w, rel=1e-9), name
        else:
            assert g == w, name


@pytest.mark.parametrize("user", USERS)
def test_user_summary_matches_python(store: Store, user: str) -> None:
    got = user_summary(store, user)
    _close(got, expected_summary(user))
    assert got.total_interactions == got.total_traces
    assert UserSummary.from_dict(got.to_dict()) == got


def test_user_summary_scoped_and_unknown(store: Store) -> None:
    _close(user_summary(store, "u3", experiment_ids=["1"]), expected_summary("u3", {"1"}))
    empty = TraceReader(store).user_summary("nobody")
    assert empty == UserSummary(user_id="nobody")
    assert empty.avg_response_time_ms is None
    assert empty.error_rate is None


def big_order() -> list[TraceEvent]:
    turns = [e for e in EVENTS if e.metadata.get("mlflow.trace.session") == BIG_SESSION]
    return sorted(turns, key=lambda e: (e.timestamp_ms, e.trace_id))


def test_long_session_pages_in_order(store: Store) -> None:
    expected = big_order()
    pages: list[SessionTimeline] = []
    token: str | None = None
    while True:
        page = session_timeline(store, BIG_SESSION, page_token=token, max_results=500)
        pages.append(page)
        token = page.next_page_token
        if token is None:
            break
    assert [len(p.turns) for p in pages] == [500, 500, 200]
    turns = [t for p in pages for t in p.turns]
    assert [t.turn for t in turns] == list(range(1, BIG_TURNS + 1))
    assert [t.trace_id for t in turns] == [e.trace_id for e in expected]
    assert [t.timestamp_ms for t in turns] == [e.timestamp_ms for e in expected]
    assert all(p.total_turns == BIG_TURNS for p in pages)
    assert turns[0].status is TraceState.OK
    assert turns[0].user_id == "heavy"
    assert SessionTimeline.from_dict(pages[1].to_dict()) == pages[1]


def test_small_pages_number_turns_across_pages(store: Store) -> None:
    reader = TraceReader(store)
    session = next(e.metadata["mlflow.trace.session"] for e in EVENTS if "mlflow.trace.session" in e.metadata)
    expected = sorted((e for e in EVENTS if e.metadata.get("mlflow.trace.session") == session),
                      key=lambda e: (e.timestamp_ms, e.trace_id))
    first = reader.session_timeline(session, max_results=3)
    second = reader.session_timeline(session, page_token=first.next_page_token, max_results=3)
    got = first.turns + second.turns
    assert [t.turn for t in got] == list(range(1, len(got) + 1))
    assert [t.trace_id for t in got] == [e.trace_id for e in expected[: len(got)]]
    assert got[0].request_preview == expected[0].request_preview
    assert got[0].execution_time_ms == expected[0].execution_time_ms
    assert got[0].status == expected[0].state
    assert first.total_turns == len(expected)
    with pytest.raises(InvalidPageTokenError):
        reader.session_timeline(BIG_SESSION, page_token=first.next_page_token)
    scoped = reader.session_timeline(session, experiment_ids=["nope"])
    assert scoped.turns == []
    assert scoped.total_turns == 0
    assert scoped.next_page_token is None
