"""Session state as a pure, idempotent, order-independent fold over a session's distinct traces.

``apply(state, facts)`` adds one trace to a session. Every field is a commutative, idempotent
aggregate of the *set* of traces seen (min/max, counts and sums over distinct trace ids, previews
chosen by the smallest/largest ``(timestamp, trace_id)``), so re-delivered traces change nothing and
out-of-order or late traces give the same state as in-order ones. ``close_idle`` is the only
time-dependent step: a session whose last turn is older than the inactivity gap (or that exceeds the
maximum duration) is closed; a later turn reopens the *same* record.

Nothing here does I/O; the stream processors persist and ship these states.
"""

from __future__ import annotations

import base64
import hashlib
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Literal

from tracehouse.schemas import SessionRecord
from tracehouse.schemas.events import MAX_SEALED_TURNS

from ._facts import TraceFacts

SessionStatus = Literal["open", "closed"]
_U64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Session boundaries. Times in milliseconds."""

    inactivity_gap_ms: int = 30 * 60 * 1000
    max_duration_ms: int | None = None


@dataclass(slots=True)
class SessionState:
    """Everything known about one session. ``trace_ids`` makes :func:`apply` idempotent."""

    session_id: str
    experiment_id: str
    first_ms: int
    last_ms: int
    last_end_ms: int
    turns: int = 0
    total_duration_ms: int = 0
    error_turns: int = 0
    user_ids: set[str] = field(default_factory=set)
    first_key: tuple[int, str] = (0, "")
    first_request_preview: str = ""
    last_key: tuple[int, str] = (0, "")
    last_response_preview: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    status: SessionStatus = "open"
    inferred: bool = False
    #: A user's session-less traces of one day, kept only to count each trace once (no record).
    hidden: bool = False
    #: Bumped on every change; the store keeps the highest version of a session's record.
    version: int = 0
    #: Trace ids counted since the session was last closed ...
    trace_ids: set[str] = field(default_factory=set)
    #: ... and the 64-bit hashes of those counted before, sorted (8 bytes a trace: see :func:`close`).
    sealed: bytes = b""

    def seen(self, trace_id: str) -> bool:
        """Whether this trace was already counted."""
        return trace_id in self.trace_ids or (bool(self.sealed) and _sealed_has(self.sealed, trace_hash(trace_id)))

    @property
    def avg_duration_ms(self) -> float:
        return self.total_duration_ms / self.turns if self.turns else 0.0

    def to_record(self) -> SessionRecord:
        """The record shipped on ``sessions.v1`` and stored by the sink. A closed record carries the
        hashes of its traces (see :func:`from_record`)."""
        hashes = ""
        if self.status == "closed" and not self.trace_ids and self.turns <= MAX_SEALED_TURNS:
            hashes = base64.b64encode(self.sealed).decode()
        return SessionRecord(
            session_id=self.session_id, experiment_id=self.experiment_id, user_ids=sorted(self.user_ids),
            first_ms=self.first_ms, last_ms=self.last_ms, last_end_ms=self.last_end_ms, turns=self.turns,
            total_duration_ms=self.total_duration_ms, error_turns=self.error_turns,
            first_request_preview=self.first_request_preview, last_response_preview=self.last_response_preview,
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, total_tokens=self.total_tokens,
            status=self.status, inferred=self.inferred, version=self.version, first_trace_id=self.first_key[1],
            last_trace_id=self.last_key[1], trace_hashes=hashes,
        )  # fmt: skip

    def record(self) -> dict[str, object]:
        """The session record the sink stores (no dedup set)."""
        return {
            "session_id": self.session_id, "experiment_id": self.experiment_id,
            "user_ids": sorted(self.user_ids), "first_ms": self.first_ms, "last_ms": self.last_ms,
            "last_end_ms": self.last_end_ms, "turns": self.turns, "total_duration_ms": self.total_duration_ms,
            "avg_duration_ms": self.avg_duration_ms, "error_turns": self.error_turns,
            "first_request_preview": self.first_request_preview,
            "last_response_preview": self.last_response_preview, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "total_tokens": self.total_tokens, "status": self.status,
            "inferred": self.inferred, "version": self.version,
        }  # fmt: skip


def from_record(record: SessionRecord) -> SessionState | None:
    """The state a closed record was emitted from, exactly (its counted traces are its sealed hashes),
    or ``None`` when the record does not carry them (an open record, or one past ``MAX_SEALED_TURNS``)."""
    if record.status != "closed" or (record.turns and not record.trace_hashes):
        return None
    sealed = base64.b64decode(record.trace_hashes)
    if len(sealed) != 8 * record.turns:
        return None
    return SessionState(
        session_id=record.session_id, experiment_id=record.experiment_id, first_ms=record.first_ms,
        last_ms=record.last_ms, last_end_ms=record.last_end_ms, turns=record.turns,
        total_duration_ms=record.total_duration_ms, error_turns=record.error_turns, user_ids=set(record.user_ids),
        first_key=(record.first_ms, record.first_trace_id), first_request_preview=record.first_request_preview,
        last_key=(record.last_ms, record.last_trace_id), last_response_preview=record.last_response_preview,
        input_tokens=record.input_tokens, output_tokens=record.output_tokens, total_tokens=record.total_tokens,
        status="closed", inferred=record.inferred, version=record.version, sealed=sealed,
    )  # fmt: skip


def new_session(facts: TraceFacts, session_id: str, inferred: bool = False) -> SessionState:
    return SessionState(
        session_id=session_id, experiment_id=facts.experiment_id, first_ms=facts.timestamp_ms,
        last_ms=facts.timestamp_ms, last_end_ms=facts.timestamp_ms + facts.execution_time_ms,
        first_key=(facts.timestamp_ms, facts.trace_id), last_key=(facts.timestamp_ms, facts.trace_id),
        inferred=inferred,
    )  # fmt: skip


def apply(state: SessionState, facts: TraceFacts) -> bool:
    """Add one trace to ``state`` in place. Returns ``False`` (and changes nothing) for a trace
    already counted. A closed session that receives a turn is open again."""
    if state.seen(facts.trace_id):
        return False
    state.trace_ids.add(facts.trace_id)
    key = (facts.timestamp_ms, facts.trace_id)
    state.turns += 1
    state.total_duration_ms = min(state.total_duration_ms + facts.execution_time_ms, _U64_MAX)
    state.error_turns += facts.error
    state.first_ms = min(state.first_ms, facts.timestamp_ms)
    state.last_ms = max(state.last_ms, facts.timestamp_ms)
    state.last_end_ms = max(state.last_end_ms, facts.timestamp_ms + facts.execution_time_ms)
    if facts.user_id:
        state.user_ids.add(facts.user_id)
    if state.turns == 1 or key <= state.first_key:
        state.first_key, state.first_request_preview = key, facts.request_preview
    if state.turns == 1 or key >= state.last_key:
        state.last_key, state.last_response_preview = key, facts.response_preview
    state.input_tokens = min(state.input_tokens + facts.input_tokens, _U64_MAX)  # records are UInt64
    state.output_tokens = min(state.output_tokens + facts.output_tokens, _U64_MAX)
    state.total_tokens = min(state.total_tokens + facts.total_tokens, _U64_MAX)
    state.status = "open"
    state.version += 1
    return True


def close_due(state: SessionState, now_ms: int, config: SessionConfig) -> bool:
    """Whether an open session should be closed at (event-time) ``now_ms``."""
    if state.status != "open":
        return False
    if now_ms - state.last_end_ms >= config.inactivity_gap_ms:
        return True
    return config.max_duration_ms is not None and state.last_end_ms - state.first_ms >= config.max_duration_ms


def close(state: SessionState) -> None:
    """Close ``state`` in place: its record is then the session's final record (until a late turn).
    Its trace ids are sealed into a sorted array of 64-bit hashes: a closed session keeps
    deduplicating late and replayed turns at 8 bytes a trace instead of ~100."""
    state.status = "closed"
    state.version += 1
    seal(state)


def seal(state: SessionState) -> None:
    if not state.trace_ids:
        return
    hashes = array("Q", state.sealed) if state.sealed else array("Q")
    hashes.extend(trace_hash(t) for t in state.trace_ids)
    state.sealed = array("Q", sorted(set(hashes))).tobytes()
    state.trace_ids = set()


def trace_hash(trace_id: str) -> int:
    """A stable 64-bit hash of a trace id (BLAKE2b: ids may be sequential or structured)."""
    return int.from_bytes(hashlib.blake2b(trace_id.encode(), digest_size=8).digest(), "little")


def _sealed_has(sealed: bytes, h: int) -> bool:
    hashes = memoryview(sealed).cast("Q")
    i = bisect_left(hashes, h)
    return i < len(hashes) and hashes[i] == h


def loose_key(user_id: str, day: int) -> str:
    """The state key of a user's session-less traces of one UTC day (never a record)."""
    return f"\x00loose:{user_id}:{day}"


def inferred_session_id(user_id: str, start_ms: int) -> str:
    """The id of an inferred session: its user and the time of its first turn (the user's BLAKE2b
    hash instead when the id would exceed the 250 characters a session id may have)."""
    sid = f"inferred:{user_id}:{start_ms}"
    if len(sid) <= 250:
        return sid
    return f"inferred:{hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()}:{start_ms}"
