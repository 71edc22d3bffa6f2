"""Folding traces into session states, per source partition: what the sessionizer knows between flushes.

:class:`Folder` keeps a :class:`PartitionFold` per owned ``traces.v1`` partition, restored from the
faust table on first use, and folds each envelope's ``trace`` lines into it with the pure
:func:`~._session.apply` (idempotent, so replays are harmless). It also closes the sessions due at the
partition's event-time watermark, infers sessions when asked, queues each newly counted trace's
``user_trace`` fact for its user's partition, and evicts closed sessions past their retention once
every event that touched them is committed.

No I/O and no awaits: a fold never interleaves with a flush.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from tracehouse.schemas import TRACE_ID_PATTERN, UserTraceFact, encode_event
from tracehouse.schemas.kafka import partition_for

from ._changelog import decode_state, parse_watermark, watermark_key
from ._config import SessionizerConfig
from ._facts import TraceFacts, facts_from_line
from ._rollup import day_of
from ._session import SessionState, apply, close, close_due, inferred_session_id, loose_key, new_session

log = logging.getLogger("tracehouse.sessionizer")

_TRACE_ID: Final = re.compile(TRACE_ID_PATTERN)


@dataclass(slots=True)
class SessionizerStats:
    """Counters of one worker (since it started)."""

    envelopes: int = 0
    traces: int = 0
    #: Traces that changed a session (not duplicates or replays of counted ones).
    new_traces: int = 0
    #: Trace lines with neither a session nor a user id (no session, no rollup).
    sessionless: int = 0
    #: Traces given an inferred session (``infer_sessions``).
    inferred: int = 0
    #: ``user_trace`` facts sent to ``user-rollups.v1``.
    facts_emitted: int = 0
    #: Closed sessions forgotten after ``state_retention_ms``.
    sessions_evicted: int = 0
    #: Sessions (and days of session-less traces) read back from the store.
    sessions_loaded: int = 0
    #: Lines that were neither events of another type nor decodable (the sink dead-letters them).
    undecodable: int = 0
    #: Envelopes delivered past an offset never delivered (a faust recovery race): refused and re-read.
    offset_holes: int = 0
    #: Holes below the committed offset (faust restored an older state) read outside faust and folded.
    offset_holes_filled: int = 0
    flushes: int = 0
    records_emitted: int = 0
    sessions_closed: int = 0
    #: ``time.perf_counter()`` of the first and latest envelope folded.
    first_envelope_at: float | None = None
    last_envelope_at: float | None = None


@dataclass(slots=True)
class PartitionFold:
    """The state of one source partition this worker owns."""

    sessions: dict[str, SessionState] = field(default_factory=dict)
    open: set[str] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    #: ``infer_sessions``: each user's inferred session ids, oldest first.
    inferred: dict[str, list[str]] = field(default_factory=dict)
    #: Encoded ``user_trace`` facts per ``user-rollups.v1`` partition, in source order.
    outbox: dict[int, list[bytes]] = field(default_factory=dict)
    #: Closed sessions as ``(last_end_ms, session id)``, for eviction (``state_retention_ms``).
    closed: list[tuple[int, str]] = field(default_factory=list)
    #: Source offset of the last event that changed each session (eviction waits for its commit).
    touched_at: dict[str, int] = field(default_factory=dict)
    watermark_ms: int = 0
    #: Watermark at the last full scan for sessions due to close.
    scanned_ms: int = -1
    #: Highest source offset folded (saved with the watermark), and the one restored from the changelog:
    #: a restored session may have been touched up to there, so eviction waits for the commit to pass it.
    folded_offset: int = -1
    restored_offset: int = -1
    #: ``(watermark, folded offset)`` as last written to the changelog.
    saved_watermark: tuple[int, int] = (0, -1)
    #: Restored sessions whose records the next flush emits again: a crash between a flush's changelog
    #: write and its records would otherwise leave records that nothing ever emits.
    reemit: set[str] = field(default_factory=set)
    #: The offset a refused envelope is waiting for, and since when (``time.monotonic()``).
    hole: tuple[int, float] | None = None
    #: Nothing was saved for this partition (a new broker epoch, or a first start): with a session
    #: source, its open sessions and watermark are loaded from the store before the first fold.
    fresh: bool = False


def restore(partition: int, table: Mapping[bytes, bytes | None], offset: int) -> PartitionFold:
    """A partition's state as the (recovered) table holds it; ``offset`` is the first to be folded."""
    part = PartitionFold()
    prefix = watermark_key(partition)
    for key, raw in table.items():
        if not key.startswith(prefix) or raw is None:
            continue
        if key == prefix:
            part.watermark_ms, part.restored_offset = parse_watermark(raw)
            part.saved_watermark = (part.watermark_ms, part.restored_offset)
            continue
        state = decode_state(raw)
        sid = state.session_id
        part.sessions[sid] = state
        if state.status == "open":
            part.open.add(sid)
        else:
            part.closed.append((state.last_end_ms, sid))
        if state.inferred and state.user_ids:
            part.inferred.setdefault(min(state.user_ids), []).append(sid)
    heapq.heapify(part.closed)
    for ids in part.inferred.values():
        ids.sort(key=lambda sid: (part.sessions[sid].first_ms, sid))
    part.scanned_ms = part.watermark_ms
    # Restored: the stream must go on right after what was folded (the committed offset is at most one
    # past it), so a later first offset is a hole. New: whatever comes first starts it.
    part.folded_offset = part.restored_offset if table.get(prefix) is not None else offset - 1
    part.reemit = {sid for sid, state in part.sessions.items() if not state.hidden}
    part.fresh = table.get(prefix) is None
    if part.sessions:
        log.info("partition %d: restored %d sessions, folded up to offset %d (event time %d)", partition,
                 len(part.sessions), part.restored_offset, part.watermark_ms)  # fmt: skip
    else:
        log.info("partition %d: folding from offset %d, no saved sessions", partition, offset)
    return part


def _valid_fact(facts: TraceFacts, user: str) -> bool:
    """Whether a trace's fact passes the contract (the sink would dead-letter it otherwise)."""
    return len(user) <= 250 and _TRACE_ID.match(facts.trace_id) is not None and 0 < len(facts.experiment_id) <= 64


class Folder:
    """The per-partition fold of one worker."""

    def __init__(self, config: SessionizerConfig, stats: SessionizerStats) -> None:
        self.config = config
        self.stats = stats
        self.session_config = config.session_config
        #: Closed sessions are forgotten this long (event time) after their last turn (``None``: kept).
        self.retention_ms = config.state_retention_ms
        self.parts: dict[int, PartitionFold] = {}
        self._rollup_partitions = range(config.rollup_partitions)

    def partition(self, partition: int, table: Mapping[bytes, bytes | None], offset: int = 0) -> PartitionFold:
        """The partition's state, restored from ``table`` on first use."""
        part = self.parts.get(partition)
        if part is None:
            part = self.parts[partition] = restore(partition, table, offset)
        return part

    def fold(self, partition: int, lines: Iterable[bytes], offset: int, table: Mapping[bytes, bytes | None]) -> None:
        """Fold the lines of the envelope at ``offset`` of ``partition``."""
        self.fold_parsed(partition, self.parse(lines), offset, table)

    def parse(self, lines: Iterable[bytes]) -> list[tuple[int, TraceFacts]]:
        """The trace facts of an envelope's lines, with their line numbers (other events skipped)."""
        parsed = []
        for index, line in enumerate(lines):
            try:
                facts = facts_from_line(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.stats.undecodable += 1
                continue
            if facts is not None:
                parsed.append((index, facts))
        return parsed

    def fold_parsed(self, partition: int, parsed: list[tuple[int, TraceFacts]], offset: int,
                    table: Mapping[bytes, bytes | None]) -> None:  # fmt: skip
        """Fold an envelope's parsed facts (:meth:`parse`) at ``offset`` of ``partition``."""
        part = self.partition(partition, table, offset)
        if offset > part.folded_offset:
            part.folded_offset = offset
        horizon = int(time.time() * 1000) + self.config.max_clock_skew_ms
        for index, facts in parsed:
            self.stats.traces += 1
            if part.watermark_ms < facts.timestamp_ms <= horizon:  # a clock far ahead must not close everything
                part.watermark_ms = facts.timestamp_ms
            self._fold_one(part, facts, partition, offset, index)

    def state_key(self, facts: TraceFacts) -> str | None:
        """The key of the state a trace folds into, when a store may hold it: its session, or its
        user's day of session-less traces (``None``: no state, or an inferred session)."""
        if facts.session_id:
            return facts.session_id
        if facts.user_id and not self.config.infer_sessions:
            return loose_key(facts.user_id, day_of(facts.timestamp_ms))
        return None

    def missing(self, part: PartitionFold, parsed: list[tuple[int, TraceFacts]]) -> list[str]:
        """The state keys of ``parsed`` this partition does not hold (to load before folding)."""
        keys = {k for _, f in parsed if (k := self.state_key(f)) is not None and k not in part.sessions}
        return sorted(keys)

    def adopt(self, part: PartitionFold, states: Iterable[SessionState]) -> None:
        """Take over states read back from the store (not dirty: the store has them)."""
        for state in states:
            sid = state.session_id
            if sid in part.sessions:
                continue
            part.sessions[sid] = state
            if state.status == "open":
                part.open.add(sid)
            else:
                heapq.heappush(part.closed, (state.last_end_ms, sid))

    def _fold_one(self, part: PartitionFold, facts: TraceFacts, partition: int, offset: int, index: int) -> None:
        sid = facts.session_id
        user = facts.user_id
        inferred = hidden = False
        if not sid:
            if not user:
                self.stats.sessionless += 1
                return
            if self.config.infer_sessions:
                sid, inferred = self._infer(part, facts, user), True
            else:  # no session: a per-user, per-day state only to count each trace once
                sid, hidden = loose_key(user, day_of(facts.timestamp_ms)), True
        state = part.sessions.get(sid)
        if state is None:
            state = part.sessions[sid] = new_session(facts, sid, inferred=inferred)
            state.hidden = hidden
            if inferred and user:
                ids = part.inferred.setdefault(user, [])
                bisect.insort(ids, sid, key=lambda x: (part.sessions[x].first_ms, x))
        part.touched_at[sid] = offset  # duplicates too: eviction waits until the replay is past them
        if not apply(state, facts):
            return
        self.stats.new_traces += 1
        if inferred:
            self.stats.inferred += 1
        part.dirty.add(sid)
        part.open.add(sid)
        if user and self.config.emit_rollups and _valid_fact(facts, user):
            fact = UserTraceFact(
                user_id=user, trace_id=facts.trace_id, timestamp_ms=facts.timestamp_ms,
                execution_time_ms=facts.execution_time_ms, src_partition=partition, src_offset=offset,
                src_line=index, experiment_id=facts.experiment_id, session_id="" if hidden else sid,
                error=facts.error, input_tokens=facts.input_tokens, output_tokens=facts.output_tokens,
                total_tokens=facts.total_tokens,
            )  # fmt: skip
            target = partition_for(user.encode(), self._rollup_partitions)  # the fact's key is its user
            part.outbox.setdefault(target, []).append(encode_event(fact))

    def _infer(self, part: PartitionFold, facts: TraceFacts, user: str) -> str:
        """The inferred session of a session-less trace: the user's session it was already counted in,
        else one whose turns are within the inactivity gap of it, else a new one starting with it."""
        gap = self.session_config.inactivity_gap_ms
        ts = facts.timestamp_ms
        near = None
        for sid in reversed(part.inferred.get(user, ())):
            state = part.sessions[sid]
            if state.seen(facts.trace_id):
                return sid
            if near is None and state.first_ms - gap < ts < state.last_end_ms + gap:
                near = sid
        return near if near is not None else inferred_session_id(user, ts)

    def close_due(self, part: PartitionFold) -> None:
        """Close the sessions due at the partition's watermark: all open ones when it advanced since
        the last scan, otherwise only the ones that changed (a late turn may reopen an old session)."""
        if part.watermark_ms > part.scanned_ms:
            candidates: Iterable[str] = list(part.open)
            part.scanned_ms = part.watermark_ms
        else:
            candidates = [sid for sid in part.dirty if sid in part.open]
        now_ms = part.watermark_ms
        cfg = self.session_config
        for sid in candidates:
            state = part.sessions[sid]
            if close_due(state, now_ms, cfg):
                close(state)
                part.open.discard(sid)
                part.dirty.add(sid)
                heapq.heappush(part.closed, (state.last_end_ms, sid))
                if not state.hidden:
                    self.stats.sessions_closed += 1

    def evictable(self, part: PartitionFold, committed: int | None, limit: int = 10_000) -> list[SessionState]:
        """Take from the partition's queue of closed sessions those whose last turn ended
        ``retention_ms`` before the watermark and every event that touched them is below ``committed``
        (a replay must never meet a session it already counted but no longer remembers), oldest first.
        :meth:`evict` then forgets them or puts them back."""
        retention = self.retention_ms
        if retention is None or committed is None:
            return []
        horizon = part.watermark_ms - retention
        out: list[SessionState] = []
        while part.closed and part.closed[0][0] < horizon and len(out) < limit:
            last_end, sid = part.closed[0]
            state = part.sessions.get(sid)
            if state is None or state.status != "closed" or state.last_end_ms != last_end:
                heapq.heappop(part.closed)  # stale: evicted or reopened since
                continue
            # restored sessions may have been touched up to the restored offset
            touched = max(part.touched_at.get(sid, -1), part.restored_offset)
            if sid in part.dirty or touched >= committed:
                break
            heapq.heappop(part.closed)
            out.append(state)
        return out

    def evict(self, part: PartitionFold, candidates: list[SessionState], confirmed: set[str] | None = None
              ) -> list[str]:  # fmt: skip
        """Forget the ``candidates`` taken by :meth:`evictable`; with ``confirmed``, only those (the ones
        the store holds exactly, so they can be loaded back if they reopen) and queue the others again."""
        evicted: list[str] = []
        for state in candidates:
            sid = state.session_id
            if part.sessions.get(sid) is not state or state.status != "closed" or sid in part.dirty:
                continue  # reopened meanwhile: queued again when it closes
            if confirmed is not None and sid not in confirmed:
                heapq.heappush(part.closed, (state.last_end_ms, sid))
                continue
            del part.sessions[sid]
            part.touched_at.pop(sid, None)
            if state.inferred and state.user_ids:
                ids = part.inferred.get(min(state.user_ids), [])
                if sid in ids:
                    ids.remove(sid)
            evicted.append(sid)
        self.stats.sessions_evicted += len(evicted)
        return evicted
