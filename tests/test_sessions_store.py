"""Session records in ClickHouse: written through RowBatch/write_batch and through the sink (real chDB
and, for the sink, the real Tansu broker), read with ``list_sessions`` / ``get_session`` over the store,
over HTTP and from the CLI. Ground truth is computed in Python from the records sent."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import msgspec
import pytest
from _serve import serving
from _workload import chat_workload
from click.testing import CliRunner

from tracehouse.app.cli import main
from tracehouse.app.embedded import TansuBroker, ensure_topics
from tracehouse.processors import Sink
from tracehouse.query import (
    InvalidOrderByError,
    InvalidParameterError,
    SessionSummary,
    TraceClient,
    TraceReader,
    session_feedback,
)
from tracehouse.schemas import AssessmentEvent, SessionRecord, Topics, TraceEvent, encode_envelope
from tracehouse.storage import RowBatch, Store, migrate, write_batch

BASE_MS = 1_795_343_520_000
USERS = [f"user-{i}" for i in range(5)]


def make_records(n_sessions: int = 60, seed: int = 11, experiment: str | None = None) -> list[SessionRecord]:
    """Several versions per session (turn counts grow with the version), some closed; session 0 is
    closed at version 2 and reopened by a late turn at version 3. Ids session-000..011 match the traces
    of ``chat_workload`` so their timelines exist."""
    rng = random.Random(seed)
    out: list[SessionRecord] = []
    for s in range(n_sessions):
        sid = f"session-{s:03d}"
        users = [] if s % 13 == 12 else [USERS[s % len(USERS)]] + ([USERS[(s + 1) % 5]] if s % 11 == 5 else [])
        first = BASE_MS + rng.randint(0, 50) * 60_000
        versions = 3 if s == 0 else rng.randint(1, 4)
        turns = 0
        last = first
        for v in range(1, versions + 1):
            turns += rng.randint(1, 3)
            last += rng.randint(1, 30) * 1000
            closed = v == versions and rng.random() < 0.5
            if s == 0:
                closed = v == 2  # closed at v2, reopened at v3
            out.append(
                SessionRecord(
                    session_id=sid, first_ms=first, last_ms=last, last_end_ms=last + 500, turns=turns,
                    version=v, experiment_id=experiment or ("1" if s % 4 == 3 else "0"), user_ids=users,
                    total_duration_ms=turns * rng.randint(50, 900), error_turns=rng.randint(0, turns),
                    first_request_preview=f"hello {sid}", last_response_preview=f"bye v{v}",
                    input_tokens=turns * 10, output_tokens=turns * 5, total_tokens=turns * 15,
                    status="closed" if closed else "open", inferred=s % 7 == 0,
                )
            )  # fmt: skip
    return out


def newest(records: Sequence[SessionRecord]) -> dict[tuple[str, str], SessionRecord]:
    best: dict[tuple[str, str], SessionRecord] = {}
    for r in records:
        key = (r.experiment_id, r.session_id)
        if key not in best or r.version > best[key].version:
            best[key] = r
    return best


def expected(
    records: Sequence[SessionRecord], *, user: str | None = None, status: str | None = None,
    since: int | None = None, until: int | None = None, key: str = "last_ms", desc: bool = True,
) -> list[str]:  # fmt: skip
    rows = [
        r for r in newest(records).values()
        if (user is None or user in r.user_ids) and (status is None or r.status == status)
        and (since is None or r.last_ms >= since) and (until is None or r.first_ms < until)
    ]  # fmt: skip
    rows.sort(key=lambda r: (r.experiment_id, r.session_id))
    rows.sort(key=lambda r: getattr(r, key), reverse=desc)  # stable: ties keep (experiment, session) ASC
    return [r.session_id for r in rows]


def collect(client: TraceClient | TraceReader, page_size: int, **kwargs: Any) -> list[SessionSummary]:
    out: list[SessionSummary] = []
    token = None
    while True:
        page = client.list_sessions(max_results=page_size, page_token=token, **kwargs)
        assert len(page.sessions) <= page_size
        out.extend(page.sessions)
        token = page.next_page_token
        if not token:
            return out


RECORDS = make_records()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, str]]:
    store = Store(f"chdb://{tmp_path_factory.mktemp('sess') / 'chdb'}")
    migrate(store)
    traces = RowBatch()
    for e in chat_workload():
        traces.add(e)
    write_batch(store, traces, token="traces")
    # Versions in several blocks, newest first for half of them (order of arrival must not matter),
    # and one block written twice (a replay: its token drops it).
    shuffled = RECORDS[:]
    random.Random(5).shuffle(shuffled)
    for n, chunk in enumerate(shuffled[k : k + 17] for k in range(0, len(shuffled), 17)):
        batch = RowBatch()
        for r in chunk:
            batch.add(r)
        write_batch(store, batch, token=f"sessions-{n}")
        write_batch(store, batch, token=f"sessions-{n}")
    with serving(store) as url:
        try:
            yield store, url
        finally:
            store.close()


def test_rows_and_newest_version_wins(served: tuple[Store, str]) -> None:
    store, _ = served
    # Older versions may already be merged away; FINAL reads see only the newest of each session.
    assert int(store.query("SELECT count() FROM sessions FINAL")[0][0]) == len(newest(RECORDS))
    sessions = collect(TraceReader(store), 500)
    truth = newest(RECORDS)
    assert len(sessions) == len(truth)
    for s in sessions:
        r = truth[(s.experiment_id, s.session_id)]
        assert (s.version, s.turns, s.status, s.last_ms, list(s.user_ids)) == (
            r.version, r.turns, r.status, r.last_ms, r.user_ids)  # fmt: skip
        assert s.user_id == (r.user_ids[0] if r.user_ids else None)
    reopened = next(s for s in sessions if s.session_id == "session-000")
    assert (reopened.version, reopened.status) == (3, "open")


@pytest.mark.parametrize(
    ("filters", "key", "desc"),
    [
        ({}, "last_ms", True),
        ({"user": "user-1"}, "first_ms", False),
        ({"user": "user-2"}, "turns", True),  # user-2 is also the second user of session-005
        ({"status": "closed"}, "error_turns", False),
        ({"status": "open", "since": BASE_MS + 20 * 60_000}, "total_duration_ms", True),
        ({"since": BASE_MS + 10 * 60_000, "until": BASE_MS + 30 * 60_000}, "last_ms", False),
    ],
)
def test_filters_ordering_and_exactly_once_paging(
    served: tuple[Store, str], filters: dict[str, Any], key: str, desc: bool
) -> None:
    store, url = served
    want = expected(RECORDS, **filters, key=key, desc=desc)
    assert want, "the case must select something"
    kwargs: dict[str, Any] = {
        "user_id": filters.get("user"), "status": filters.get("status"), "since": filters.get("since"),
        "until": filters.get("until"), "order_by": f"{key} {'DESC' if desc else 'ASC'}",
    }  # fmt: skip
    reader = TraceReader(store)
    for size in (1, 7, 500):
        got = [s.session_id for s in collect(reader, size, **kwargs)]
        assert got == want, (size, kwargs)
    with TraceClient(url) as remote:
        over_http = collect(remote, 7, **kwargs)
    direct = collect(TraceClient.from_store(store), 7, **kwargs)
    assert over_http == direct
    assert [s.session_id for s in direct] == want


def test_default_order_experiments_and_bad_input(served: tuple[Store, str]) -> None:
    store, url = served
    reader = TraceReader(store)
    assert [s.session_id for s in reader.list_sessions(max_results=500)] == expected(RECORDS)
    in_one = [s.session_id for s in reader.list_sessions(experiment_ids=["1"], max_results=500)]
    assert in_one
    assert in_one == [s for s in expected(RECORDS) if int(s[-3:]) % 4 == 3]
    page = reader.list_sessions(max_results=5)
    assert page.next_page_token
    with pytest.raises(InvalidParameterError):  # a token of another search
        reader.list_sessions(max_results=5, status="open", page_token=page.next_page_token)
    with pytest.raises(InvalidOrderByError):
        reader.list_sessions(order_by="name DESC")
    with pytest.raises(InvalidParameterError):
        reader.list_sessions(status="pending")
    resp = httpx.get(f"{url}/api/tracehouse/v1/sessions", params={"status": "pending"})
    assert resp.status_code == 400
    assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    resp = httpx.get(f"{url}/api/tracehouse/v1/sessions", params={"order_by": "turns", "max_results": 2})
    assert [s["turns"] for s in resp.json()["sessions"]] == sorted(r.turns for r in newest(RECORDS).values())[:2]


def test_get_session_summary_and_timeline(served: tuple[Store, str]) -> None:
    store, url = served
    direct = TraceClient.from_store(store)
    with TraceClient(url) as remote:
        for sid in ("session-000", "session-003"):
            detail = direct.get_session(sid, max_results=2)
            assert detail.summary is not None
            assert detail.summary.session_id == sid
            assert detail.summary.version == newest(RECORDS)[(detail.summary.experiment_id, sid)].version
            assert detail.timeline.turns
            assert detail.timeline.total_turns >= len(detail.timeline.turns)
            assert detail.timeline == direct.session_timeline(sid, max_results=2)
            assert remote.get_session(sid, max_results=2) == detail
            # The older client call on the same route still reads the timeline.
            assert remote.session_timeline(sid, max_results=2) == detail.timeline
            # Paging the timeline through get_session.
            turns = list(detail.timeline.turns)
            token = detail.timeline.next_page_token
            while token:
                nxt = remote.get_session(sid, page_token=token, max_results=2)
                turns.extend(nxt.timeline.turns)
                token = nxt.timeline.next_page_token
            assert [t.turn for t in turns] == list(range(1, detail.timeline.total_turns + 1))
        unknown = remote.get_session("no-such-session")
        assert unknown.summary is None
        assert unknown.timeline.total_turns == 0
        # A session recorded but with no traces here: summary, empty timeline.
        only_summary = remote.get_session("session-040")
        assert only_summary.summary is not None
        assert only_summary.timeline.turns == []


def test_dataframe_and_cli(served: tuple[Store, str]) -> None:
    store, url = served
    df = TraceClient.from_store(store).list_sessions_df(user_id="user-3", max_results=None)
    assert list(df["session_id"]) == expected(RECORDS, user="user-3")
    assert {"session_id", "user_id", "status", "turns", "last_ms"} <= set(df.columns)
    with TraceClient(url) as remote:
        assert remote.list_sessions_df(max_results=3).shape[0] == 3

    result = CliRunner().invoke(main, ["sessions", "--uri", url, "--user", "user-3", "--status", "open",
                                       "--max-results", "500", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["session_id"] for r in rows] == expected(RECORDS, user="user-3", status="open")
    table = CliRunner().invoke(main, ["sessions", "--uri", url, "--max-results", "2"])
    assert table.exit_code == 0
    assert "more sessions: --page-token" in table.output
    bad = CliRunner().invoke(main, ["sessions", "--uri", url, "--order-by", "nope"])
    assert bad.exit_code != 0
    assert "order_by" in bad.output


@pytest.mark.integration
def test_sink_consumes_sessions_topic(broker: TansuBroker, topics: Topics, served: tuple[Store, str]) -> None:
    """The sink subscribes to the sessions topic next to the traces topic. It writes into the module's
    store (chDB: one engine per process) under an experiment of its own."""
    from test_sink_kafka import config, count, publish, running

    store, _ = served
    experiment = f"sink-{topics.prefix}"
    records = make_records(25, seed=4, experiment=experiment)
    rng = random.Random(1)
    shuffled = records[:]
    rng.shuffle(shuffled)
    messages = [(int(r.session_id[-3:]) % 2, encode_envelope([_line(r)])) for r in shuffled]
    # Replays of some records (as a restarted sessionizer would send) are harmless.
    messages += messages[:10]
    trace = msgspec.structs.replace(chat_workload(sessions=1)[0], trace_id="tr-" + "f" * 32, experiment_id=experiment)

    async def run() -> None:
        await ensure_topics(broker.bootstrap, topics, 2)
        ends = await publish(broker.bootstrap, topics.sessions, messages)
        trace_ends = await publish(broker.bootstrap, topics.traces, [(0, encode_envelope([_line(trace)]))])
        sink = Sink(config(broker, topics, store.uri), store)
        async with running(sink):
            want = {(topics.sessions, p): end - 1 for p, end in ends.items()}
            want.update({(topics.traces, p): end - 1 for p, end in trace_ends.items()})
            assert await sink.wait_committed(want, timeout_s=30)
        assert sink.stats().events_rejected == 0

    asyncio.run(run())
    where = f"WHERE experiment_id = '{experiment}'"
    assert count(store, f"SELECT count() FROM sessions FINAL {where}") == len(newest(records))  # replays collapse
    assert count(store, f"SELECT count() FROM traces {where}") == 1
    got = collect(TraceReader(store), 10, experiment_ids=[experiment])
    assert [s.session_id for s in got] == expected(records)
    truth = newest(records)
    assert all(s.version == truth[(s.experiment_id, s.session_id)].version for s in got)


def _line(event: Any) -> bytes:
    return msgspec.json.encode(event)


def test_feedback_is_counted_on_its_session(served: tuple[Store, str]) -> None:
    """Feedback on a session's traces and session-level feedback (``session_id``) count on the session;
    expectations, invalidated feedback and other sessions' feedback do not."""
    store, url = served
    traces = [e for e in chat_workload() if isinstance(e, TraceEvent)]
    mine = [t.trace_id for t in traces if t.metadata.get("mlflow.trace.session") == "session-007"]
    other = next(t.trace_id for t in traces if t.metadata.get("mlflow.trace.session") == "session-008")
    n = iter(range(100))

    def fb(trace_id: str, name: str, **kw: Any) -> AssessmentEvent:
        return AssessmentEvent(assessment_id=f"a-{next(n):032x}", trace_id=trace_id, name=name,
                               kind=kw.pop("kind", "feedback"), value=kw.pop("value", True),
                               create_time_ms=BASE_MS, **kw)  # fmt: skip

    batch = RowBatch()
    for event in (
        fb(mine[0], "thumbs"), fb(mine[1], "thumbs", value=False), fb(mine[0], "relevance", value=0.8),
        fb(other, "thumbs", session_id="session-007"),  # session-level, attached elsewhere
        fb(mine[1], "expected", kind="expectation", value="x"),  # not feedback
        fb(mine[2] if len(mine) > 2 else mine[0], "thumbs", valid=False),  # overridden
        fb(other, "thumbs"),  # another session's
    ):
        batch.add(event)
    write_batch(store, batch, token="feedback")
    want = {"relevance": 1, "thumbs": 3}
    assert session_feedback(store, "session-007") == want
    with TraceClient(url) as remote:
        assert remote.get_session("session-007").feedback == want
        assert remote.get_session("no-such-session").feedback == {}
