"""The sessionizer's fold without a broker: inferred sessions, session-less traces, the facts it emits,
eviction, and the exactly-once argument for rollups as a property: a worker that crashes at any point
and is replaced by one restored from its last flushed state re-emits identical facts in the same
order, so the sink's marks (``advance_mark``) apply every trace's fact exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.processors import advance_mark
from tracehouse.processors.sessions import Sessionizer, SessionizerConfig
from tracehouse.schemas import TraceEvent, encode_event, split_envelope

T0 = 1_795_000_000_000
MIN = 60_000


def line(i: int, ts: int, user: str | None, session: str | None = None, dur: int = 100,
         state: Literal["OK", "ERROR"] = "OK") -> bytes:  # fmt: skip
    meta = {}
    if user:
        meta["mlflow.trace.user"] = user
    if session:
        meta["mlflow.trace.session"] = session
    return encode_event(
        TraceEvent(trace_id=f"tr-{i:032x}", timestamp_ms=ts, execution_time_ms=dur, state=state, metadata=meta)
    )


def worker(tmp: Path, **overrides: object) -> Sessionizer:
    return Sessionizer(SessionizerConfig(datadir=str(tmp), rollup_partitions=3, **overrides))  # type: ignore[arg-type]


def facts_of(w: Sessionizer) -> list[dict[str, object]]:
    """The facts waiting in the outboxes, decoded, in emission order per target partition."""
    out = []
    for part in w._parts.values():
        for target in sorted(part.outbox):
            out += [orjson.loads(x) | {"target": target} for x in part.outbox[target]]
    return out


def test_inferred_sessions_split_on_the_gap_and_count_each_trace_once(tmp_path: Path) -> None:
    w = worker(tmp_path, infer_sessions=True, inactivity_gap_ms=30 * MIN)
    w.fold(0, [line(1, T0, "u"), line(2, T0 + 5 * MIN, "u"), line(3, T0 + 60 * MIN, "u"), line(2, T0 + 5 * MIN, "u"),
               line(4, T0 + 1 * MIN, "v"), line(5, T0 + 2 * MIN, None)], offset=7)  # fmt: skip
    sessions = w._parts[0].sessions
    assert {sid: (s.turns, s.inferred) for sid, s in sessions.items()} == {
        f"inferred:u:{T0}": (2, True), f"inferred:u:{T0 + 60 * MIN}": (1, True), f"inferred:v:{T0 + MIN}": (1, True),
    }  # fmt: skip
    assert w.stats.inferred == 4
    assert w.stats.sessionless == 1  # neither user nor session
    late = line(6, T0 + 20 * MIN, "u")  # within the gap of the first session's end: joins it
    w.fold(0, [late], offset=8)
    assert sessions[f"inferred:u:{T0}"].turns == 3
    facts = facts_of(w)
    assert sorted(str(f["trace_id"]) for f in facts) == [f"tr-{i:032x}" for i in (1, 2, 3, 4, 6)]
    u_sessions = {f["session_id"] for f in facts if f["user_id"] == "u"}
    assert u_sessions == {f"inferred:u:{T0}", f"inferred:u:{T0 + 60 * MIN}"}


def test_without_inference_sessionless_traces_only_count_for_rollups(tmp_path: Path) -> None:
    w = worker(tmp_path)
    w.fold(2, [line(1, T0, "u"), line(1, T0, "u"), line(2, T0 + 90 * MIN, "u", session="s")], offset=0)
    part = w._parts[2]
    visible = [s for s in part.sessions.values() if not s.hidden]
    assert [s.session_id for s in visible] == ["s"]
    batches = w._snapshot()
    records = [orjson.loads(r) for b in batches for r in b.records]
    assert [r["session_id"] for r in records] == ["s"]  # no record for the hidden per-user state
    facts = [orjson.loads(x) for b in batches for lines in b.facts.values() for x in lines]
    assert sorted((f["trace_id"], f.get("session_id", "")) for f in facts) == [
        (f"tr-{1:032x}", ""), (f"tr-{2:032x}", "s")
    ]  # fmt: skip
    assert all(f["src_partition"] == 2 and f["src_offset"] == 0 for f in facts)


def test_closed_sessions_are_evicted_only_after_retention_and_commit(tmp_path: Path) -> None:
    class Committed(Sessionizer):
        committed: int | None = None

        def _committed(self, partition: int) -> int | None:
            return self.committed

    w = Committed(SessionizerConfig(datadir=str(tmp_path), inactivity_gap_ms=30 * MIN, state_retention_ms=60 * MIN))
    w.fold(0, [line(1, T0, "u", "old")], offset=0)
    w.fold(0, [line(2, T0 + 40 * MIN, "u", "b")], offset=1)
    w._snapshot()  # closes "old" (gap passed)
    assert w._parts[0].sessions["old"].status == "closed"
    w.fold(0, [line(3, T0 + 2 * 60 * MIN, "u", "c")], offset=2)
    w._snapshot()  # past retention, but offset 0 is not committed yet: kept
    assert "old" in w._parts[0].sessions
    w.committed = 1
    batches = w._snapshot()
    assert "old" not in w._parts[0].sessions
    assert w.stats.sessions_evicted == 1
    assert (b"0\x00old", None) in [c for b in batches for c in b.changelog]  # a tombstone in the changelog


def test_closed_session_keeps_deduplicating_with_sealed_hashes(tmp_path: Path) -> None:
    w = worker(tmp_path, inactivity_gap_ms=30 * MIN)
    w.fold(0, [line(i, T0 + i * MIN, "u", "s") for i in range(50)], offset=0)
    w.fold(0, [line(99, T0 + 200 * MIN, "u", "t")], offset=1)
    w._snapshot()
    state = w._parts[0].sessions["s"]
    assert state.status == "closed"
    assert not state.trace_ids
    assert len(state.sealed) == 50 * 8
    w.fold(0, [line(7, T0 + 7 * MIN, "u", "s")], offset=2)  # a duplicate after close: nothing changes
    assert (state.turns, state.status) == (50, "closed")
    w.fold(0, [line(100, T0 + 60 * MIN, "u", "s")], offset=3)  # a late turn reopens the same record
    assert (state.turns, state.status) == (51, "open")


#: A trace number: repeated numbers are duplicate events of one trace (same identity and times).
event_st = st.integers(0, 30)


@settings(max_examples=60, deadline=None)
@given(
    envelopes=st.lists(st.lists(event_st, min_size=1, max_size=6), min_size=1, max_size=12),
    crash=st.data(),
)
def test_replay_after_a_crash_re_emits_identical_facts_applied_once(
    tmp_path_factory: object, envelopes: list[list[int]], crash: st.DataObject
) -> None:
    """A: folds, flushes at ``f``, keeps folding to ``k`` (facts sent), crashes. B: restored from A's
    state at ``f``, replays from the committed offset ``c <= f`` to the end. The facts the sink applies
    (A's, then B's, through ``advance_mark``) equal one uninterrupted run's, each trace once."""
    infer = crash.draw(st.booleans(), "infer")

    def ln(i: int) -> bytes:
        user = [None, "u1", "u2", "u3"][i % 4]
        session = ["s1", None, "s2"][i % 3]
        return line(i, T0 + (i % 11) * 7 * MIN + i, user, session, dur=i * 11, state="ERROR" if i % 4 == 1 else "OK")

    payloads = [[ln(e) for e in env] for env in envelopes]
    n = len(payloads)
    f = crash.draw(st.integers(0, n), "flush at")
    k = crash.draw(st.integers(f, n), "crash at")
    c = crash.draw(st.integers(0, f), "committed")
    tmp = Path(str(tmp_path_factory.mktemp("fold")))  # type: ignore[attr-defined]

    def run(w: Sessionizer, start: int, stop: int) -> None:
        for off in range(start, stop):
            w.fold(0, split_envelope(b"\n".join(payloads[off])), offset=off)

    def drain(w: Sessionizer) -> list[tuple[int, bytes]]:
        out = []
        for b in w._snapshot():
            for target in sorted(b.facts):
                out += [(target, x) for x in b.facts[target]]
            for key, value in b.changelog:  # what the flush writes to the changelog (restored by B)
                if value is None:
                    w.table.data.pop(key, None)
                else:
                    w.table.data[key] = value
        return out

    reference = worker(tmp / "ref", infer_sessions=infer)
    run(reference, 0, n)
    want = drain(reference)

    a = worker(tmp / "a", infer_sessions=infer)
    run(a, 0, f)
    sent = drain(a)
    saved = dict(a.table.data)
    run(a, f, k)
    sent += drain(a)  # sent before the crash, but the state of this flush never reached the changelog
    b = worker(tmp / "b", infer_sessions=infer)
    b.table.data.update(saved)
    run(b, c, n)
    sent += drain(b)

    marks: dict[int, dict[int, tuple[int, int]]] = {}  # the sink's marks, per user-rollups partition
    applied = []
    for target, x in sent:
        d = orjson.loads(x)
        if advance_mark(marks.setdefault(target, {}), d["src_partition"], d["src_offset"], d.get("src_line", 0)):
            applied.append((target, x))
    assert sorted(applied) == sorted(want)
    assert len({orjson.loads(x)["trace_id"] for _, x in applied}) == len(applied)


def test_one_bad_trace_neither_crashes_nor_poisons_the_worker(tmp_path: Path) -> None:
    """Lines the sink would dead-letter are skipped; absurd token counts are capped so the state still
    encodes; a trace far in the future does not move the watermark; over-long ids are not identities."""
    w = worker(tmp_path)
    huge = '{"input_tokens": 9223372036854775807, "output_tokens": 9223372036854775807}'

    def raw(**fields: object) -> bytes:
        base: dict[str, object] = {"type": "trace", "trace_id": f"tr-{1:032x}", "timestamp_ms": T0,
                                   "execution_time_ms": 10, "state": "OK", "metadata": {}}  # fmt: skip
        return orjson.dumps(base | fields)

    w.fold(0, [
        raw(timestamp_ms=2**64 - 1),  # beyond Int64 nanoseconds: the sink dead-letters it
        raw(trace_id="not-a-trace-id"),
        raw(trace_id=f"tr-{2:032x}", metadata={"mlflow.trace.session": "s", "mlflow.trace.tokenUsage": huge}),
        raw(trace_id=f"tr-{3:032x}", metadata={"mlflow.trace.session": "s", "mlflow.trace.tokenUsage": huge}),
        raw(trace_id=f"tr-{4:032x}", timestamp_ms=T0 + 200 * 365 * 86_400_000, metadata={"mlflow.trace.session": "f"}),
        raw(trace_id=f"tr-{5:032x}", metadata={"mlflow.trace.session": "s", "mlflow.trace.user": "u" * 300}),
    ], offset=0)  # fmt: skip
    assert w.stats.undecodable == 2
    part = w._parts[0]
    assert part.watermark_ms == T0  # the trace 200 years ahead did not advance it
    batches = w._snapshot()  # encodes every state: must not raise
    records = {orjson.loads(r)["session_id"]: orjson.loads(r) for b in batches for r in b.records}
    assert records["s"]["total_tokens"] == 2**64 - 1
    assert records["s"].get("user_ids", []) == []
    assert records["s"].get("status", "open") == "open"  # (defaults are omitted on the wire)
    assert not [f for b in batches for lines in b.facts.values() for f in lines]  # no user: no facts


def _restored(tmp: Path, folded_through: int) -> Sessionizer:
    """A worker whose partition 0 was flushed after folding through ``folded_through``: a closed
    session and the watermark sentinel are in its (recovered) table."""
    from tracehouse.processors.sessions._changelog import encode_state, state_key, watermark_key
    from tracehouse.processors.sessions._facts import facts_from_line
    from tracehouse.processors.sessions._session import apply, close, new_session

    facts = facts_from_line(line(1, T0, "u", "s"))
    assert facts is not None
    state = new_session(facts, "s")
    apply(state, facts)
    close(state)
    w = worker(tmp)
    w.table.data[state_key(0, "s")] = encode_state(state)
    w.table.data[watermark_key(0)] = b"%d:%d" % (T0, folded_through)
    return w


def test_an_offset_hole_after_recovery_is_read_again_not_skipped(tmp_path: Path) -> None:
    """faust can lose the record it fetched while seeking after table recovery (faust-streaming#596):
    the worker refuses the records after the hole (not folded, not acked) until the hole is read."""
    w = _restored(tmp_path, folded_through=48)
    assert w._contiguous(0, 48)  # the committed offset is at most one past what was folded
    assert w._contiguous(0, 49)
    w.fold(0, [line(2, T0 + MIN, "u", "s")], offset=49)
    assert not w._contiguous(0, 51)  # offset 50 never arrived
    assert not w._contiguous(0, 52)
    assert w.stats.offset_holes == 1
    assert w.folder.parts[0].hole is not None
    assert w.folder.parts[0].hole[0] == 50
    assert w._contiguous(0, 50)  # read again: the stream goes on
    assert w.folder.parts[0].hole is None


def test_faust_never_commits_over_an_offset_that_was_not_acked(tmp_path: Path) -> None:
    from collections import defaultdict

    from faust.transport.consumer import Consumer
    from faust.types import TP
    from intervaltree import IntervalTree

    worker(tmp_path)  # installs the guard
    tp = TP("traces", 0)

    def consumer(acked: list[int], committed: int) -> Any:
        return type("C", (), {"_acked": {tp: list(acked)}, "_acked_index": {tp: set(acked)},
                              "_committed_offset": {tp: committed}, "_gap": defaultdict(IntervalTree)})()  # fmt: skip

    assert Consumer._new_offset(consumer([50, 51], committed=49), tp) is None  # 49 is missing
    assert Consumer._new_offset(consumer([49, 50, 51], committed=49), tp) == 52


def test_offsets_faust_dropped_below_the_restored_state_are_acked_so_commits_go_on(tmp_path: Path) -> None:
    """faust can drop the records it fetched while seeking after table recovery (faust-streaming#596).
    When they lie below the offset the restored state was folded through, no hole shows, but faust's
    commit would wait for their acks for ever (its guard above): a flush acks every offset from the
    committed one through what it persisted, and nothing past it."""
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.transport.consumer import Consumer
    from faust.types import TP

    w = _restored(tmp_path, folded_through=48)
    tp = TP(w._traces.get_topic_name(), 0)
    books: Any = SimpleNamespace(_committed_offset={tp: 41}, _acked=defaultdict(list), _acked_index=defaultdict(set),
                                 _gap=defaultdict(list), _n_acked=0)  # fmt: skip
    w.app.consumer = books
    for offset in (45, 46, 47, 48):  # 41 to 44 were dropped by faust; these were delivered and acked
        assert w._contiguous(0, offset)  # no hole: they are below what the restored state folded
    books._acked[tp], books._acked_index[tp] = [45, 46, 47, 48], {45, 46, 47, 48}
    assert Consumer._new_offset(books, tp) is None  # without the fix, stuck at 41 for ever
    books._acked[tp], books._acked_index[tp] = [45, 46, 47, 48], {45, 46, 47, 48}
    asyncio.run(w.flush())
    assert sorted(books._acked[tp]) == list(range(41, 49))  # 41 to 48: persisted; 49 is not folded
    assert Consumer._new_offset(books, tp) == 49

    w.fold(0, [line(3, T0 + 2 * MIN, "u", "s")], offset=49)  # folded, not yet flushed
    books._committed_offset[tp] = 49
    books._acked[tp], books._acked_index[tp] = [], set()
    w._ack_folded({0: 48}, dict(w._generation))  # what the last flush persisted
    assert books._acked[tp] == []


def test_restored_sessions_have_their_records_emitted_again(tmp_path: Path) -> None:
    """A crash between a flush's changelog write and its records would leave a state whose record no
    one ever emits: the first flush after a restore emits the restored sessions' records again."""
    w = _restored(tmp_path, folded_through=3)
    w.fold(0, [], offset=4)
    (batch,) = w._snapshot()
    assert [orjson.loads(r)["session_id"] for r in batch.records] == ["s"]
    assert batch.changelog == []  # the state itself is already in the changelog
    assert w._snapshot() == []  # once


def test_a_hold_folds_exactly_up_to_the_cut(tmp_path: Path) -> None:
    """``Sessionizer.hold`` (the cut ``tracehouse up`` drains to before a new broker generation): the
    agent folds the events below the cut, neither folds nor acks the rest, and says when it reached
    the cut. (faust's stream is replaced by the events it would deliver.)"""
    from types import SimpleNamespace

    from tracehouse.schemas import encode_envelope

    w = worker(tmp_path)
    w.epoch = "epoch"  # entered already (reading it needs a broker)
    events = [SimpleNamespace(message=SimpleNamespace(partition=0, offset=n, topic="traces"),
                              value=encode_envelope([line(n, T0 + n * MIN, "u", "s")])) for n in range(10)]  # fmt: skip

    class Stream:
        def noack(self) -> Stream:
            return self

        async def events(self) -> Any:
            for event in events:
                yield event

    w.hold({0: 6})
    assert not w.reached({0: 6})
    asyncio.run(w._agent(Stream()))
    assert w.positions() == {0: 6}
    assert w.reached({0: 6})
    assert [e.message.offset for e in w._pending] == [0, 1, 2, 3, 4, 5]  # acked with the next flush
    (record,) = [orjson.loads(r) for b in w._snapshot() for r in b.records]
    assert record["turns"] == 6
