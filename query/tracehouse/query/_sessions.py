"""Sessions as the sessionizer recorded them: list, filter, order and page them, and read one with its
turns.

The ``sessions`` table holds every version of every session record; ``FINAL`` keeps the newest per
``(experiment_id, session_id)``. Pages are keyset pages on ``(<order key>, experiment_id, session_id)``:
the next page starts strictly after the last row's key, so every session is returned exactly once
however deep the page (as long as the sessions themselves do not change between pages).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, ClassVar, Final, Literal

from tracehouse.schemas.errors import InvalidParameterError
from tracehouse.storage import Store

from ._analysis import SessionTimeline, session_timeline
from ._listing import keyset_after, millis, parse_order
from ._operations import ExperimentIds, PageToken, Param, read_operation
from ._page import Page
from ._paging import decode_page_token, encode_page_token, fingerprint, page_size
from ._params import Params

#: Keys ``list_sessions`` may order by.
SESSION_ORDER_KEYS: Final = ("first_ms", "last_ms", "turns", "error_turns", "total_duration_ms")
DEFAULT_SESSION_ORDER: Final = "last_ms DESC"
SESSION_STATUSES: Final = ("open", "closed")

_SELECT: Final = (
    "session_id, experiment_id, user_id, user_ids, first_ms, last_ms, last_end_ms, turns, error_turns, "
    "total_duration_ms, first_request_preview, last_response_preview, input_tokens, output_tokens, "
    "total_tokens, status, inferred, version"
)

SessionStatus = Literal["open", "closed"]


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """The newest record of one session (see :class:`tracehouse.schemas.SessionRecord`).

    ``user_id`` is the first of ``user_ids`` (``None`` when the session has no user). Times are
    milliseconds since the epoch; ``total_duration_ms`` sums the turns' execution times.
    """

    session_id: str
    experiment_id: str = "0"
    user_id: str | None = None
    user_ids: tuple[str, ...] = ()
    first_ms: int = 0
    last_ms: int = 0
    last_end_ms: int = 0
    turns: int = 0
    error_turns: int = 0
    total_duration_ms: int = 0
    first_request_preview: str = ""
    last_response_preview: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    status: SessionStatus = "open"
    inferred: bool = False
    version: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_ids", tuple(self.user_ids))

    @property
    def duration_ms(self) -> int:
        """Wall-clock span of the session: first turn's start to the last turn's end."""
        return max(0, self.last_end_ms - self.first_ms)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["user_ids"] = list(self.user_ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SessionSummary:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> SessionSummary:
        return cls(
            session_id=str(r[0]), experiment_id=str(r[1]), user_id=str(r[2]) or None,
            user_ids=tuple(str(u) for u in r[3]), first_ms=int(r[4]), last_ms=int(r[5]),
            last_end_ms=int(r[6]), turns=int(r[7]), error_turns=int(r[8]), total_duration_ms=int(r[9]),
            first_request_preview=str(r[10]), last_response_preview=str(r[11]), input_tokens=int(r[12]),
            output_tokens=int(r[13]), total_tokens=int(r[14]),
            status="closed" if r[15] == "closed" else "open", inferred=bool(r[16]), version=int(r[17]),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SessionPage(Page):
    """One page of :func:`list_sessions`; ``next_page_token`` is set only while sessions remain."""

    sessions: list[SessionSummary] = field(default_factory=list)
    next_page_token: str | None = None

    ITEMS: ClassVar[str] = "sessions"
    ITEM: ClassVar[Any] = SessionSummary


@dataclass(frozen=True, slots=True)
class SessionDetail:
    """One session: its stored summary (``None`` when the sessionizer has not recorded it), one page
    of its turns, read from the traces, and its feedback: valid feedback assessments per name, on its
    traces or logged for the session (``session_id``)."""

    session_id: str
    summary: SessionSummary | None
    timeline: SessionTimeline
    feedback: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id,
                "summary": self.summary.to_dict() if self.summary is not None else None,
                "timeline": self.timeline.to_dict(), "feedback": dict(self.feedback)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SessionDetail:
        summary = d.get("summary")
        return cls(session_id=d["session_id"],
                   summary=SessionSummary.from_dict(summary) if summary else None,
                   timeline=SessionTimeline.from_dict(d["timeline"]),
                   feedback={str(k): int(v) for k, v in (d.get("feedback") or {}).items()})  # fmt: skip


def parse_session_order(order_by: str | Sequence[str] | None) -> list[tuple[str, bool]]:
    """``["turns DESC", "first_ms"]`` → ``[("turns", True), ("first_ms", False)]`` (descending flag)."""
    return parse_order(order_by, SESSION_ORDER_KEYS, DEFAULT_SESSION_ORDER, "sessions")


@read_operation("sessions", "/api/tracehouse/v1/sessions", cli="sessions", result=SessionPage, items="sessions",
                help="List sessions as the sessionizer recorded them (newest record of each), most recent first.")
def list_sessions(
    store: Store,
    user_id: Annotated[str | None, Param("Only sessions of this user.", aliases=("user",), cli="user")] = None,
    experiment_ids: ExperimentIds = None,
    status: Annotated[str | None, Param("Only open or closed sessions.", choices=SESSION_STATUSES)] = None,
    since: Annotated[int | None, Param("Last turn at or after this time (ms since the epoch).")] = None,
    until: Annotated[int | None, Param("First turn before this time (ms since the epoch).")] = None,
    order_by: Annotated[str | Sequence[str] | None, Param(
        ", ".join(SESSION_ORDER_KEYS) + ", with ASC/DESC. Default: last_ms DESC.")] = None,
    max_results: Annotated[int, Param("Sessions per page (at most 500).")] = 100,
    page_token: PageToken = None,
) -> SessionPage:
    """One page (at most 500) of sessions, newest version of each.

    Filters: ``user_id`` (any of the session's users), ``experiment_ids``, ``status`` (``open`` /
    ``closed``), ``since`` (the session's last turn at or after, ms) and ``until`` (its first turn
    before, ms): together they select the sessions active in ``[since, until)``. ``order_by`` is one or
    more of ``first_ms``, ``last_ms``, ``turns``, ``error_turns``, ``total_duration_ms`` with ``ASC`` /
    ``DESC`` (default ``last_ms DESC``); ties break on ``(experiment_id, session_id)``.
    """
    limit = page_size(max_results)
    if status is not None and status not in SESSION_STATUSES:
        raise InvalidParameterError(f"Invalid value {status!r} for parameter 'status': use 'open' or 'closed'")
    since, until = millis("since", since), millis("until", until)
    keys = parse_session_order(order_by)
    experiments = sorted(set(experiment_ids)) if experiment_ids else None
    search = fingerprint("sessions", user_id, experiments, status, since, until, keys)

    params = Params()
    where: list[str] = ["turns > 0"]  # a record reconciled to no stored trace (see storage._reconcile)
    if user_id is not None:
        u = params.add(user_id, "String")
        where.append(f"(user_id = {u} OR has(user_ids, {u}))")
    if experiments:
        where.append(f"experiment_id IN {params.add(experiments, 'Array(String)')}")
    if status is not None:
        where.append(f"status = {params.add(status, 'String')}")
    if since is not None:
        where.append(f"last_ms >= {params.add(since, 'Int64')}")
    if until is not None:
        where.append(f"first_ms < {params.add(until, 'Int64')}")
    columns = [(k, desc, "Int64") for k, desc in keys]
    columns += [("experiment_id", False, "String"), ("session_id", False, "String")]
    if page_token:
        body = decode_page_token(page_token, search, [int] * len(keys) + [str, str])
        where.append(keyset_after(columns, body["k"], params))
    order = ", ".join(f"{c} {'DESC' if d else 'ASC'}" for c, d, _ in columns)
    key_select = ", ".join(f"toInt64({c})" if t == "Int64" else c for c, _, t in columns)
    rows = store.query(
        f"SELECT {_SELECT}, {key_select} FROM sessions FINAL WHERE {' AND '.join(where)} "
        f"ORDER BY {order} LIMIT {int(limit) + 1}",
        params.values,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    token = None
    if more and rows:
        last = rows[-1][-len(columns):]
        token = encode_page_token([int(v) for v in last[: len(keys)]] + [str(v) for v in last[len(keys):]], search)
    return SessionPage(sessions=[SessionSummary.from_row(r) for r in rows], next_page_token=token)


def session_summary(store: Store, session_id: str, experiment_ids: Sequence[str] | None = None
                    ) -> SessionSummary | None:  # fmt: skip
    """The newest stored record of ``session_id`` (the most recently active one if the id is used in
    several experiments), or ``None``."""
    params = Params()
    where = f"session_id = {params.add(session_id, 'String')} AND turns > 0"
    if experiment_ids:
        where += f" AND experiment_id IN {params.add(sorted(set(experiment_ids)), 'Array(String)')}"
    rows = store.query(
        f"SELECT {_SELECT} FROM sessions FINAL WHERE {where} ORDER BY last_ms DESC, experiment_id LIMIT 1",
        params.values,
    )
    return SessionSummary.from_row(rows[0]) if rows else None


def _session_body(detail: SessionDetail) -> dict[str, Any]:
    # "session" is the timeline (the shape older clients read); "summary" the stored record or null.
    summary = detail.summary.to_dict() if detail.summary is not None else None
    return {"session": detail.timeline.to_dict(), "summary": summary, "feedback": detail.feedback}


def _session_from_body(d: Mapping[str, Any]) -> SessionDetail:
    timeline = SessionTimeline.from_dict(d["session"])
    summary = d.get("summary")
    return SessionDetail(session_id=timeline.session_id, summary=SessionSummary.from_dict(summary) if summary else None,
                         timeline=timeline, feedback={str(k): int(v) for k, v in (d.get("feedback") or {}).items()})


@read_operation("session", "/api/tracehouse/v1/sessions/{session_id}", cli="session",
                encode=_session_body, decode=_session_from_body,
                help="One session: its recorded summary (status, turns, errors, tokens) and its turns in order.")
def get_session(
    store: Store,
    session_id: str,
    page_token: PageToken = None,
    max_results: Annotated[int, Param("Turns per page.")] = 100,
    experiment_ids: ExperimentIds = None,
) -> SessionDetail:
    """The stored summary of ``session_id``, one page of its turns (:func:`session_timeline`) and its
    feedback counts (:func:`session_feedback`)."""
    timeline = session_timeline(store, session_id, experiment_ids, page_token, max_results)
    return SessionDetail(session_id=session_id, summary=session_summary(store, session_id, experiment_ids),
                         timeline=timeline, feedback=session_feedback(store, session_id, experiment_ids))  # fmt: skip


def session_feedback(store: Store, session_id: str, experiment_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Valid feedback on ``session_id`` per assessment name: logged on one of its traces, or with the
    session's id (session-level feedback). Overridden and deleted assessments do not count."""
    params = Params()
    sid = params.add(session_id, "String")
    traces = f"SELECT trace_id FROM traces WHERE session_id = {sid}"
    if experiment_ids:
        traces += f" AND experiment_id IN {params.add(sorted(set(experiment_ids)), 'Array(String)')}"
    rows = store.query(
        f"SELECT name, count() FROM assessments FINAL WHERE kind = 'feedback' AND valid = 1 "
        f"AND (session_id = {sid} OR trace_id IN ({traces})) GROUP BY name ORDER BY name",
        params.values,
    )
    return {str(name): int(n) for name, n in rows}
