"""Per-user behaviour and session flow, aggregated inside ClickHouse.

Nothing here pulls a user's or a session's traces into Python: a user summary is one aggregate
query, a session timeline reads one page of turns (keyset on ``(timestamp_ms, trace_id)``) and
counts the turns before it to number them, so a session of 50 000 turns pages in constant memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tracehouse.schemas.mlflow import TraceState
from tracehouse.storage import Store

from ._paging import decode_page_token, encode_page_token, fingerprint, page_size
from ._params import Params

#: The traces of the store, one row per trace id, with only the columns read. No ``FINAL``: a trace
#: row is written once (first write wins in the sink), so the only duplicates are identical replays.
_TRACES = "(SELECT {columns} FROM traces WHERE {where} LIMIT 1 BY trace_id)"
_SUMMARY_COLUMNS = (
    "trace_id, session_id, execution_time_ms, state, timestamp_ms, input_tokens, output_tokens, total_tokens"
)
_TURN_COLUMNS = "trace_id, timestamp_ms, execution_time_ms, state, user_id, request_preview, response_preview"
_KEY_COLUMNS = "trace_id, timestamp_ms"


def _scope(params: Params, column: str, value: str, experiment_ids: Sequence[str] | None) -> str:
    where = f"{column} = {params.add(value, 'String')}"
    if experiment_ids:
        where += f" AND experiment_id IN {params.add(sorted(set(experiment_ids)), 'Array(String)')}"
    return where


@dataclass(frozen=True, slots=True)
class UserSummary:
    """How one user used the app: interactions (traces), sessions, response times, errors, tokens.

    Response times are trace execution times in milliseconds; ``p50`` / ``p95`` interpolate linearly
    between the nearest ranks (numpy's default percentile). Time and ratio fields are None when the
    user has no traces.
    """

    user_id: str
    total_traces: int = 0
    unique_sessions: int = 0
    avg_response_time_ms: float | None = None
    p50_response_time_ms: float | None = None
    p95_response_time_ms: float | None = None
    error_count: int = 0
    error_rate: float | None = None
    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    @property
    def total_interactions(self) -> int:
        """Alias of :attr:`total_traces` (one interaction is one trace)."""
        return self.total_traces

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserSummary:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def user_summary_from_traces(store: Store, user_id: str, experiment_ids: Sequence[str] | None = None
                             ) -> UserSummary:  # fmt: skip
    """Aggregate every trace of ``user_id`` (optionally within ``experiment_ids``) in one query: the
    reference computation the rollups (:func:`tracehouse.query.user_summary`) must equal."""
    params = Params()
    where = _scope(params, "user_id", user_id, experiment_ids)
    source = _TRACES.format(columns=_SUMMARY_COLUMNS, where=where)
    rows = store.query(
        "SELECT count(), uniqExactIf(session_id, session_id != ''), avg(execution_time_ms), "
        "quantilesExactInclusive(0.5, 0.95)(execution_time_ms), countIf(state = 'ERROR'), "
        "min(timestamp_ms), max(timestamp_ms), sum(input_tokens), sum(output_tokens), sum(total_tokens) "
        f"FROM {source}",
        params.values,
    )
    (total, sessions, avg, quantiles, errors, first, last, tokens_in, tokens_out, tokens_total) = rows[0]
    if not total:
        return UserSummary(user_id=user_id)
    return UserSummary(
        user_id=user_id,
        total_traces=int(total),
        unique_sessions=int(sessions),
        avg_response_time_ms=float(avg),
        p50_response_time_ms=float(quantiles[0]),
        p95_response_time_ms=float(quantiles[1]),
        error_count=int(errors),
        error_rate=int(errors) / int(total),
        first_seen_ms=int(first),
        last_seen_ms=int(last),
        input_tokens=int(tokens_in),
        output_tokens=int(tokens_out),
        total_tokens=int(tokens_total),
    )


@dataclass(frozen=True, slots=True)
class SessionTurn:
    """One turn (trace) of a session; ``turn`` counts from 1 in (timestamp, trace id) order."""

    turn: int
    trace_id: str
    timestamp_ms: int
    execution_time_ms: int
    status: TraceState
    user_id: str | None = None
    request_preview: str | None = None
    response_preview: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", TraceState.parse(self.status))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SessionTurn:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True, slots=True)
class SessionTimeline:
    """A page of a session's turns, in order. ``total_turns`` counts the whole session;
    ``next_page_token`` is set while turns remain."""

    session_id: str
    turns: list[SessionTurn] = field(default_factory=list)
    total_turns: int = 0
    next_page_token: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "turns": [t.to_dict() for t in self.turns],
                "total_turns": self.total_turns, "next_page_token": self.next_page_token}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SessionTimeline:
        return cls(session_id=d["session_id"], turns=[SessionTurn.from_dict(t) for t in d.get("turns") or []],
                   total_turns=int(d.get("total_turns") or 0), next_page_token=d.get("next_page_token"))


def session_timeline(
    store: Store,
    session_id: str,
    experiment_ids: Sequence[str] | None = None,
    page_token: str | None = None,
    max_results: int = 100,
) -> SessionTimeline:
    """One page (at most 500 turns) of ``session_id``'s turns in (timestamp, trace id) order."""
    limit = page_size(max_results)
    experiments = sorted(set(experiment_ids)) if experiment_ids else None
    search = fingerprint("session", session_id, experiments)
    params = Params()
    scope = _scope(params, "session_id", session_id, experiments)
    after = ""
    before_count = "0"
    if page_token:
        body = decode_page_token(page_token, search, (int, str))
        ts, trace_id = body["k"]
        cursor = f"({params.add(ts, 'Int64')}, {params.add(trace_id, 'String')})"
        after = f" AND (timestamp_ms, trace_id) > {cursor}"
        before_count = (f"(SELECT count() FROM {_TRACES.format(columns=_KEY_COLUMNS, where=scope)} "
                        f"WHERE (timestamp_ms, trace_id) <= {cursor})")
    # The page is chosen from the narrow key columns; the wide ones (previews) are read for its
    # turns only: a 50,000-turn session must not read 50,000 previews to show 100.
    page = (f"SELECT trace_id FROM {_TRACES.format(columns=_KEY_COLUMNS, where=scope + after)} "
            f"ORDER BY timestamp_ms, trace_id LIMIT {int(limit)}")  # fmt: skip
    rows = store.query(
        "SELECT trace_id, timestamp_ms, execution_time_ms, state, user_id, request_preview, "
        "response_preview, "
        f"{before_count} AS before, "
        f"(SELECT count() FROM {_TRACES.format(columns=_KEY_COLUMNS, where=scope)}) AS total "
        f"FROM {_TRACES.format(columns=_TURN_COLUMNS, where=f'{scope} AND trace_id IN ({page})')} "
        f"ORDER BY timestamp_ms, trace_id LIMIT {int(limit)}",
        params.values,
    )
    if not rows:
        total = 0
        if page_token:
            count_sql = f"SELECT count() FROM {_TRACES.format(columns=_KEY_COLUMNS, where=scope)}"
            total = int(store.query(count_sql, params.values)[0][0])
        return SessionTimeline(session_id=session_id, total_turns=total)
    base = int(rows[0][7])
    turns = [
        SessionTurn(turn=base + i + 1, trace_id=r[0], timestamp_ms=int(r[1]), execution_time_ms=int(r[2]),
                    status=TraceState.parse(r[3]), user_id=r[4] or None, request_preview=r[5] or None,
                    response_preview=r[6] or None)
        for i, r in enumerate(rows)
    ]
    total = int(rows[0][8])
    token = None
    if base + len(turns) < total:
        token = encode_page_token([turns[-1].timestamp_ms, turns[-1].trace_id], search)
    return SessionTimeline(session_id=session_id, turns=turns, total_turns=total, next_page_token=token)
