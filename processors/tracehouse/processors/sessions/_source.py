"""The sessionizer's way back to what it no longer holds: sessions read back from the store.

A sessionizer holds the sessions of its partitions in its changelog. Two things leave a session out:
a new broker epoch (the changelog lived in the broker and is gone) and eviction (closed sessions are
forgotten after their retention, to bound memory). When a trace of such a session arrives, its state is
read back here before the trace is folded, exactly:

* a **closed record carrying its trace hashes** is the state it was emitted from
  (:func:`~._session.from_record`);
* otherwise the state is **folded again from the stored traces** the sessionizer already counted:
  those ingested before the current epoch began, and those of this epoch read from offsets it has
  already folded (``traces.src_offset``). A stored trace it has not folded yet (the sink may be ahead)
  is left to the fold, which then counts it and emits its rollup fact.
* a session id with **no record at all** is new when the epoch is ``complete`` (every stored session
  had its record when it began, and eviction needs a stored record): its traces are not looked up.
  Nor is its record: a Bloom filter of the ids with a stored record (built from the store on the
  first read after a partition is assigned, and given every id this worker evicts) answers "surely
  none" for a new id, so the common case (every new session) costs no store query at all. In the
  soak these lookups, one per envelope, took a third of ``up``'s time at 1,000 traces/s and grew
  with the tables until the sessionizer fell behind.

Eviction is therefore allowed only once the store holds the session exactly
(:meth:`StoreSource.confirm`): its closed record at the state's version, or, for a state without a
record (a user's session-less traces of a day) or without hashes, every trace it counted.

Blocking calls on a :class:`~tracehouse.storage.Store` (run them in a worker thread).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

from tracehouse.schemas import SessionRecord
from tracehouse.schemas.events import MAX_SEALED_TURNS
from tracehouse.schemas.kafka import partition_for
from tracehouse.storage import EpochRecord, StateTable, Store, partition_watermarks

from ._facts import TraceFacts
from ._rollup import DAY_MS
from ._session import SessionState, apply, from_record, new_session, seal

log = logging.getLogger("tracehouse.sessionizer")

_LOOSE: Final = "\x00loose:"
_CHUNK: Final = 2_000
_RECORD_COLUMNS: Final = (
    "session_id", "experiment_id", "user_ids", "first_ms", "last_ms", "last_end_ms", "turns", "total_duration_ms",
    "error_turns", "first_request_preview", "last_response_preview", "input_tokens", "output_tokens",
    "total_tokens", "status", "inferred", "version", "first_trace_id", "last_trace_id", "trace_hashes",
)  # fmt: skip
_FACT_COLUMNS: Final = (
    "trace_id, timestamp_ms, execution_time_ms, state = 'ERROR', experiment_id, user_id, session_id, "
    "request_preview, response_preview, input_tokens, output_tokens, total_tokens"
)


#: The 64-bit hash of a session id, in ClickHouse SQL and in Python alike (the first 8 bytes of its MD5,
#: little-endian).
_ID_HASH_SQL: Final = "reinterpretAsUInt64(substring(MD5(session_id), 1, 8))"
_FILTER_SLICES: Final = 16
_FILTER_FP_RATE: Final = 0.01


def id_hash(session_id: str) -> int:
    return int.from_bytes(hashlib.md5(session_id.encode(), usedforsecurity=False).digest()[:8], "little")


def _same(value: int) -> int:
    return value


def _split_loose(key: str) -> tuple[str, int]:
    user, _, day = key[len(_LOOSE) :].rpartition(":")
    return user, int(day)


def _facts(row: Sequence[Any]) -> TraceFacts:
    return TraceFacts(
        trace_id=str(row[0]), timestamp_ms=int(row[1]), execution_time_ms=int(row[2]), error=bool(row[3]),
        experiment_id=str(row[4]), user_id=str(row[5]) or None, session_id=str(row[6]) or None,
        request_preview=str(row[7]), response_preview=str(row[8]), input_tokens=int(row[9]),
        output_tokens=int(row[10]), total_tokens=int(row[11]),
    )  # fmt: skip


def _fold(key: str, rows: Iterable[Sequence[Any]], hidden: bool) -> SessionState | None:
    state: SessionState | None = None
    for row in sorted(rows, key=lambda r: (int(r[1]), str(r[0]))):
        facts = _facts(row)
        if state is None:
            state = new_session(facts, key)
            state.hidden = hidden
        apply(state, facts)
    return state


class StoreSource:
    """Sessions read back from a ClickHouse store (shared with the sink in ``tracehouse up``, or a
    ClickHouse server when the roles run apart)."""

    def __init__(self, store: Store, partitions: int) -> None:
        self.store = store
        self.partitions = partitions
        self.epoch: EpochRecord | None = None
        self._watermarks: dict[int, int] | None = None
        self._recorded: Any = None  # rbloom.Bloom of id_hash() of the session ids with a stored record

    # ----------------------------------------------------------------------------------- the epoch

    def wait_epoch(self, epoch_id: str, timeout_s: float = 300.0) -> EpochRecord:
        """Wait until the sink has registered ``epoch_id`` in the store (after reconciling what an
        unclean stop left): only then are the stored sessions the ones to continue."""
        table = StateTable(self.store)
        deadline = time.monotonic() + timeout_s
        warned = False
        while True:
            record = table.epoch()
            if record is not None and record.id == epoch_id:
                self.epoch = record
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sink did not register broker epoch {epoch_id} in {timeout_s:.0f}s")
            if not warned and time.monotonic() > deadline - timeout_s + 10:
                log.warning("waiting for a sink to register broker epoch %s in the store", epoch_id)
                warned = True
            time.sleep(0.2)

    @property
    def _started_ms(self) -> int:
        if self.epoch is None:
            raise RuntimeError("wait_epoch() first")
        return self.epoch.started_ms

    def watermark(self, partition: int) -> int:
        """The partition's event time as the stored traces of earlier epochs give it."""
        if self._watermarks is None:
            self._watermarks = partition_watermarks(self.store, self.partitions, before_ms=self._started_ms)
        return self._watermarks.get(partition, 0)

    # ----------------------------------------------------------------------------------- reading back

    def forget_recorded(self) -> None:
        """A partition was assigned: its sessions' records may have been written by another worker
        since the filter was built, so the next read builds it again."""
        self._recorded = None

    def _build_recorded(self) -> Any:
        from rbloom import Bloom

        rows = int(self.store.query("SELECT count() FROM sessions")[0][0])
        bloom = Bloom(max(2 * rows, 100_000), _FILTER_FP_RATE, _same)
        for k in range(_FILTER_SLICES):  # in slices: a big store's hashes never all sit in memory at once
            bloom.update(int(r[0]) for r in self.store.query(
                f"SELECT DISTINCT {_ID_HASH_SQL} FROM sessions WHERE turns > 0 AND inferred = 0 "
                f"AND {_ID_HASH_SQL} % {_FILTER_SLICES} = {k}"
            ))  # fmt: skip
        return bloom

    def maybe_recorded(self, ids: Sequence[str]) -> list[str]:
        """The ids that may have a stored record (the others surely have none)."""
        bloom = self._recorded  # read once: forget_recorded() may run meanwhile (in the loop's thread)
        if bloom is None:
            bloom = self._recorded = self._build_recorded()
        return [sid for sid in ids if id_hash(sid) in bloom]

    def _note_recorded(self, ids: Iterable[str]) -> None:
        bloom = self._recorded
        if bloom is not None:
            bloom.update(id_hash(sid) for sid in ids)

    def _records(self, where: str, params: dict[str, Any]) -> dict[str, SessionRecord]:
        rows = self.store.query(
            f"SELECT {', '.join(_RECORD_COLUMNS)} FROM sessions FINAL WHERE {where} AND turns > 0 AND inferred = 0",
            params,
        )
        newest: dict[str, SessionRecord] = {}
        for row in rows:
            values = dict(zip(_RECORD_COLUMNS, row, strict=True))
            values["inferred"] = bool(values["inferred"])
            values["user_ids"] = list(values["user_ids"])
            record = SessionRecord(**values)
            if record.session_id not in newest or record.version > newest[record.session_id].version:
                newest[record.session_id] = record
        return newest

    def _counted(self) -> str:
        """Stored traces this sessionizer already counted: earlier epochs', and this one's up to ``{f}``."""
        return f"(ingested_at < fromUnixTimestamp64Milli({self._started_ms}) OR src_offset <= {{f:Int64}})"

    def _sessions(self, records: dict[str, SessionRecord], ids: Sequence[str], folded: int) -> list[SessionState]:
        states = []
        refold = []
        fresh_ids_are_new = self.epoch is not None and self.epoch.complete
        for sid in ids:
            record = records.get(sid)
            if record is None and fresh_ids_are_new:
                continue  # a new session
            state = from_record(record) if record is not None else None
            if state is not None:
                states.append(state)
            else:
                refold.append(sid)
        if refold:
            rows = self.store.query(
                f"SELECT {_FACT_COLUMNS} FROM traces FINAL WHERE session_id IN {{ids:Array(String)}} "
                f"AND {self._counted()}",
                {"ids": refold, "f": folded},
            )
            by_session: dict[str, list[Sequence[Any]]] = {}
            for row in rows:
                by_session.setdefault(str(row[6]), []).append(row)
            for sid, session_rows in by_session.items():
                folded_state = _fold(sid, session_rows, hidden=False)
                if folded_state is None:
                    continue
                record = records.get(sid)
                if record is not None:
                    folded_state.version = record.version
                    folded_state.status = record.status
                    folded_state.experiment_id = record.experiment_id
                if folded_state.status == "closed":
                    seal(folded_state)
                states.append(folded_state)
        return states

    def _loose(self, keys: Sequence[str], folded: int) -> list[SessionState]:
        wanted = {_split_loose(k): k for k in keys}
        rows = self.store.query(
            f"SELECT {_FACT_COLUMNS}, toInt64(intDiv(timestamp_ms, {DAY_MS})) AS day FROM traces FINAL "
            f"WHERE session_id = '' AND user_id IN {{users:Array(String)}} AND day IN {{days:Array(Int64)}} "
            f"AND {self._counted()}",
            {"users": sorted({u for u, _ in wanted}), "days": sorted({d for _, d in wanted}), "f": folded},
        )
        grouped: dict[str, list[Sequence[Any]]] = {}
        for row in rows:
            key = wanted.get((str(row[5]), int(row[12])))
            if key is not None:
                grouped.setdefault(key, []).append(row)
        return [s for k, rs in grouped.items() if (s := _fold(k, rs, hidden=True)) is not None]

    def load(self, keys: Sequence[str], folded_offset: int) -> list[SessionState]:
        """The states of ``keys`` (session ids, or a user's day of session-less traces) as the store
        holds them; keys it has nothing for are left out (new sessions)."""
        out: list[SessionState] = []
        ids = [k for k in keys if not k.startswith(_LOOSE)]
        loose = [k for k in keys if k.startswith(_LOOSE)]
        if ids and self.epoch is not None and self.epoch.complete:
            ids = self.maybe_recorded(ids)  # a record-less id is a new session
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            out += self._sessions(self._records("session_id IN {ids:Array(String)}", {"ids": chunk}), chunk,
                                  folded_offset)  # fmt: skip
        for i in range(0, len(loose), _CHUNK):
            out += self._loose(loose[i : i + _CHUNK], folded_offset)
        return out

    def open_sessions(self, partition: int, folded_offset: int) -> list[SessionState]:
        """The partition's sessions whose newest stored record is open: the sessionizer closes them
        when its event time passes them, as if it had never stopped."""
        records = self._records("status = 'open'", {})
        mine = [sid for sid in records if partition_for(sid.encode(), range(self.partitions)) == partition]
        states: list[SessionState] = []
        for i in range(0, len(mine), _CHUNK):
            chunk = mine[i : i + _CHUNK]
            states += self._sessions({sid: records[sid] for sid in chunk}, chunk, folded_offset)
        return states

    # ----------------------------------------------------------------------------------- eviction

    def confirm(self, states: Sequence[SessionState], folded_offset: int) -> set[str]:
        """Which of these closed states (of one partition folded up to ``folded_offset``) the store holds
        exactly, so that :meth:`load` gives them back. A session always needs its record at the state's
        version (with its trace hashes, or, past ``MAX_SEALED_TURNS``, every trace it counted)."""
        with_record = [s for s in states if not s.hidden and s.turns <= MAX_SEALED_TURNS]
        counted = [s for s in states if s.hidden or s.turns > MAX_SEALED_TURNS]
        ok: set[str] = set()
        for i in range(0, len(with_record), _CHUNK):
            chunk = with_record[i : i + _CHUNK]
            stored = dict(self.store.query(
                "SELECT session_id, max(version) FROM sessions WHERE session_id IN {ids:Array(String)} "
                "AND trace_hashes != '' GROUP BY session_id",
                {"ids": [s.session_id for s in chunk]},
            ))  # fmt: skip
            ok |= {s.session_id for s in chunk if int(stored.get(s.session_id, -1)) >= s.version}
        long_records: dict[str, int] = {}
        if long_ids := [s.session_id for s in counted if not s.hidden]:
            long_records = {str(sid): int(v) for sid, v in self.store.query(
                "SELECT session_id, max(version) FROM sessions WHERE session_id IN {ids:Array(String)} "
                "GROUP BY session_id", {"ids": long_ids},
            )}  # fmt: skip
        hidden = [s for s in counted if s.hidden]
        if hidden:
            rows = self.store.query(
                f"SELECT user_id, toInt64(intDiv(timestamp_ms, {DAY_MS})), uniqExact(trace_id) FROM traces "
                f"WHERE session_id = '' AND user_id IN {{users:Array(String)}} AND {self._counted()} GROUP BY 1, 2",
                {"users": sorted({_split_loose(s.session_id)[0] for s in hidden}), "f": folded_offset},
            )
            stored_counts = {(str(u), int(d)): int(n) for u, d, n in rows}
            ok |= {s.session_id for s in hidden if stored_counts.get(_split_loose(s.session_id), -1) == s.turns}
        long = [s for s in counted if not s.hidden]
        if long:
            rows = self.store.query(
                f"SELECT session_id, uniqExact(trace_id) FROM traces WHERE session_id IN {{ids:Array(String)}} "
                f"AND {self._counted()} GROUP BY 1",
                {"ids": [s.session_id for s in long], "f": folded_offset},
            )
            stored_n = {str(sid): int(n) for sid, n in rows}
            ok |= {s.session_id for s in long if stored_n.get(s.session_id, -1) == s.turns
                   and long_records.get(s.session_id, -1) >= s.version}  # fmt: skip
        self._note_recorded(s.session_id for s in states if s.session_id in ok and not s.hidden)
        return ok
