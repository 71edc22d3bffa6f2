"""Per-user rollups as the stream processors maintain them: list users by any rollup column, read one
user with daily buckets, and summarise a user without scanning traces.

The table ``user_rollups_daily`` holds aggregate-state *deltas* per ``(user, day, experiment)``
(see migration 3); every read merges them with ``GROUP BY`` and the ``-Merge`` combinators, which is
exact: sessions are an exact set, response times the exact multiset (p50/p95 interpolate linearly
between the nearest ranks, numpy's default), the rest sums and min/max.

Days are UTC days. ``since`` / ``until`` (ms) select the days that overlap ``[since, until)``: rollups
are daily, so a bound inside a day takes that whole day.

``list_users`` pages with a keyset on ``(<order columns>, user_id)`` applied to the merged values, so
every user is returned once as long as the rollups do not change between pages. When every order
column is a sum, min, max or a ratio of sums (all but ``unique_sessions`` and the percentiles), the
page is chosen first from those cheap columns alone, and the exact sets and multisets (sessions,
response times) are merged only for the users of the page: the same rows in the same order, without
merging every user's states.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, ClassVar, Final, Literal

from tracehouse.schemas.errors import InvalidParameterError
from tracehouse.storage import Store

from ._analysis import UserSummary, user_summary_from_traces
from ._listing import keyset_after, millis, parse_order
from ._operations import ExperimentIds, PageToken, Param, SinceMs, UntilMs, read_operation
from ._page import Page
from ._paging import decode_page_token, encode_page_token, fingerprint, page_size
from ._params import Params

DAY_MS: Final = 86_400_000

#: Rollup columns ``list_users`` may order by, with their ClickHouse type (for the keyset).
USER_ORDER_KEYS: Final[dict[str, str]] = {
    "interactions": "UInt64",
    "unique_sessions": "UInt64",
    "avg_response_time_ms": "Float64",
    "p50_response_time_ms": "Float64",
    "p95_response_time_ms": "Float64",
    "error_count": "UInt64",
    "error_rate": "Float64",
    "first_seen_ms": "Int64",
    "last_seen_ms": "Int64",
    "input_tokens": "UInt64",
    "output_tokens": "UInt64",
    "total_tokens": "UInt64",
}
DEFAULT_USER_ORDER: Final = "interactions DESC"

#: The merged rollup of the selected rows, in :class:`UserRollup` field order after the group key.
_MERGED: Final = (
    "sum(interactions) AS interactions, uniqExactMerge(sessions) AS unique_sessions, "
    "sum(total_duration_ms) / interactions AS avg_response_time_ms, "
    "quantilesExactInclusiveMerge(0.5, 0.95)(durations) AS _q, _q[1] AS p50_response_time_ms, "
    "_q[2] AS p95_response_time_ms, sum(error_count) AS error_count, error_count / interactions AS error_rate, "
    "min(first_seen_ms) AS first_seen_ms, max(last_seen_ms) AS last_seen_ms, sum(input_tokens) AS input_tokens, "
    "sum(output_tokens) AS output_tokens, sum(total_tokens) AS total_tokens"
)
#: The order columns computed from sums, min and max alone, as :data:`_MERGED` computes them (a page
#: ordered by these only is selected before the expensive states are merged).
_CHEAP: Final[dict[str, str]] = {
    "interactions": "sum(interactions)",
    "error_count": "sum(error_count)",
    "error_rate": "sum(error_count) / sum(interactions)",
    "avg_response_time_ms": "sum(total_duration_ms) / sum(interactions)",
    "first_seen_ms": "min(first_seen_ms)",
    "last_seen_ms": "max(last_seen_ms)",
    "input_tokens": "sum(input_tokens)",
    "output_tokens": "sum(output_tokens)",
    "total_tokens": "sum(total_tokens)",
}
_FIELDS: Final = (
    "interactions", "unique_sessions", "avg_response_time_ms", "_q", "p50_response_time_ms",
    "p95_response_time_ms", "error_count", "error_rate", "first_seen_ms", "last_seen_ms", "input_tokens",
    "output_tokens", "total_tokens",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class UserRollup:
    """One user's rollup over the selected days (or one day: ``day`` set, ISO ``YYYY-MM-DD``).

    ``interactions`` counts traces; response times are trace execution times in ms.
    """

    user_id: str
    interactions: int = 0
    unique_sessions: int = 0
    avg_response_time_ms: float = 0.0
    p50_response_time_ms: float = 0.0
    p95_response_time_ms: float = 0.0
    error_count: int = 0
    error_rate: float = 0.0
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    day: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserRollup:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def from_row(cls, user_id: str, values: Sequence[Any], day: str | None = None) -> UserRollup:
        v = dict(zip(_FIELDS, values, strict=True))
        return cls(
            user_id=user_id, interactions=int(v["interactions"]), unique_sessions=int(v["unique_sessions"]),
            avg_response_time_ms=float(v["avg_response_time_ms"]),
            p50_response_time_ms=float(v["p50_response_time_ms"]),
            p95_response_time_ms=float(v["p95_response_time_ms"]), error_count=int(v["error_count"]),
            error_rate=float(v["error_rate"]), first_seen_ms=int(v["first_seen_ms"]),
            last_seen_ms=int(v["last_seen_ms"]), input_tokens=int(v["input_tokens"]),
            output_tokens=int(v["output_tokens"]), total_tokens=int(v["total_tokens"]), day=day,
        )  # fmt: skip

    def to_summary(self) -> UserSummary:
        """The same numbers as a :class:`UserSummary` (the shape of the raw-trace computation)."""
        n = self.interactions
        return UserSummary(
            user_id=self.user_id, total_traces=n, unique_sessions=self.unique_sessions,
            avg_response_time_ms=self.avg_response_time_ms if n else None,
            p50_response_time_ms=self.p50_response_time_ms if n else None,
            p95_response_time_ms=self.p95_response_time_ms if n else None, error_count=self.error_count,
            error_rate=self.error_rate if n else None, first_seen_ms=self.first_seen_ms if n else None,
            last_seen_ms=self.last_seen_ms if n else None, input_tokens=self.input_tokens,
            output_tokens=self.output_tokens, total_tokens=self.total_tokens,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class UserPage(Page):
    """One page of :func:`list_users`; ``next_page_token`` is set only while users remain."""

    users: list[UserRollup] = field(default_factory=list)
    next_page_token: str | None = None

    ITEMS: ClassVar[str] = "users"
    ITEM: ClassVar[Any] = UserRollup


@dataclass(frozen=True, slots=True)
class UserDetail:
    """One user: the rollup over the selected days (``None`` if the user has none) and every daily
    bucket, oldest first."""

    user_id: str
    summary: UserRollup | None
    days: list[UserRollup] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "summary": self.summary.to_dict() if self.summary else None,
                "days": [d.to_dict() for d in self.days]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserDetail:
        summary = d.get("summary")
        return cls(user_id=d["user_id"], summary=UserRollup.from_dict(summary) if summary else None,
                   days=[UserRollup.from_dict(x) for x in d.get("days") or []])  # fmt: skip


def parse_user_order(order_by: str | Sequence[str] | None) -> list[tuple[str, bool]]:
    """``["error_rate DESC", "interactions"]``-style clauses → ``[(key, descending)]``; ``user_id`` is
    always the last key (the tie-break), ascending unless given as ``user_id DESC``."""
    clauses = [order_by] if isinstance(order_by, str) else list(order_by or [])
    user = [c for c in clauses if str(c).split()[:1] == ["user_id"]]
    rest = [c for c in clauses if c not in user]
    keys = parse_order(rest or None, USER_ORDER_KEYS, DEFAULT_USER_ORDER, "users") if rest or not user else []
    user_desc = bool(user) and parse_order(user, ("user_id",), "user_id", "users")[0][1]
    return [*keys, ("user_id", user_desc)]


def _where(params: Params, experiment_ids: Sequence[str] | None, since: int | None, until: int | None) -> list[str]:
    where: list[str] = []
    if experiment_ids:
        where.append(f"experiment_id IN {params.add(sorted(set(experiment_ids)), 'Array(String)')}")
    since, until = millis("since", since), millis("until", until)
    if since is not None:
        where.append(f"day >= toDate32({params.add(since // DAY_MS, 'Int64')})")
    if until is not None:
        where.append(f"day <= toDate32({params.add((until - 1) // DAY_MS, 'Int64')})")
    return where


@read_operation("users", "/api/tracehouse/v1/users", cli="users", result=UserPage, items="users",
                help="Top users by any rollup column (from the per-user rollups the stream processors maintain).")
def list_users(
    store: Store,
    experiment_ids: ExperimentIds = None,
    since: Annotated[int | None, Param("Only days overlapping [since, until) (ms since the epoch).")] = None,
    until: Annotated[int | None, Param("See --since.")] = None,
    order_by: Annotated[str | Sequence[str] | None, Param(
        "Any rollup column with ASC/DESC: " + ", ".join(USER_ORDER_KEYS) + ".", cli_default="interactions DESC",
    )] = None,
    max_results: Annotated[int, Param("How many users (at most 500 a page).", cli="top", cli_default=20)] = 100,
    page_token: PageToken = None,
) -> UserPage:
    """One page (at most 500) of users with their rollups over the selected days.

    ``order_by``: one or more rollup columns (see :data:`USER_ORDER_KEYS`) with ``ASC`` / ``DESC``
    (default ``interactions DESC``); ties break on ``user_id``.
    """
    limit = page_size(max_results)
    keys = parse_user_order(order_by)
    experiments = sorted(set(experiment_ids)) if experiment_ids else None
    search = fingerprint("users", experiments, since, until, keys)
    params = Params()
    where = _where(params, experiments, since, until)
    columns = [(k, desc, USER_ORDER_KEYS.get(k, "String")) for k, desc in keys]
    cond = " AND ".join(where) or "1"
    # Ordered by cheap columns only: choose the page's users from those alone (written out, not
    # aliased, so they read the stored columns), then merge the full rollups of those users only.
    cheap = all(k in _CHEAP for k, _ in keys if k != "user_id")
    sort = [(_CHEAP.get(k, k), desc, t) for k, desc, t in columns] if cheap else columns
    having = ""
    if page_token:
        types: list[type] = [float if t == "Float64" else str if t == "String" else int for _, _, t in columns]
        body = decode_page_token(page_token, search, types)
        having = "HAVING " + keyset_after(sort, body["k"], params)
    order = ", ".join(f"{c} {'DESC' if d else 'ASC'}" for c, d, _ in sort)
    if cheap:
        page = (f"SELECT user_id FROM user_rollups_daily WHERE {cond} GROUP BY user_id {having} "
                f"ORDER BY {order} LIMIT {int(limit) + 1}")  # fmt: skip
        cond = f"{cond} AND user_id IN ({page})"
        having = ""
        order = ", ".join(f"{c} {'DESC' if d else 'ASC'}" for c, d, _ in columns)
    rows = store.query(
        f"SELECT user_id, {_MERGED} FROM user_rollups_daily WHERE {cond} "
        f"GROUP BY user_id {having} ORDER BY {order} LIMIT {int(limit) + 1}",
        params.values,
    )
    more = len(rows) > limit
    users = [UserRollup.from_row(str(r[0]), r[1:]) for r in rows[:limit]]
    token = None
    if more and users:
        last = users[-1].to_dict()
        key: list[Any] = []
        for name, _, t in columns:
            value = last[name]
            key.append(float(value) if t == "Float64" else str(value) if t == "String" else int(value))
        token = encode_page_token(key, search)
    return UserPage(users=users, next_page_token=token)


def get_user(
    store: Store,
    user_id: str,
    experiment_ids: Sequence[str] | None = None,
    since: int | None = None,
    until: int | None = None,
) -> UserDetail:
    """``user_id``'s rollup over the selected days and its daily buckets (one small query each)."""
    params = Params()
    where = [f"user_id = {params.add(user_id, 'String')}", *_where(params, experiment_ids, since, until)]
    cond = " AND ".join(where)
    days = [
        UserRollup.from_row(user_id, r[1:], day=_iso(r[0]))
        for r in store.query(
            f"SELECT day, {_MERGED} FROM user_rollups_daily WHERE {cond} GROUP BY day ORDER BY day", params.values
        )
    ]
    summary = None
    if days:
        rows = store.query(f"SELECT user_id, {_MERGED} FROM user_rollups_daily WHERE {cond} GROUP BY user_id",
                           params.values)  # fmt: skip
        summary = UserRollup.from_row(user_id, rows[0][1:]) if rows else None
    return UserDetail(user_id=user_id, summary=summary, days=days)


SummarySource = Literal["auto", "rollups", "traces"]


@dataclass(frozen=True, slots=True)
class UserView:
    """What the user route answers: ``user`` (the summary, the shape older clients read) and ``rollup``
    (the rollup with its daily buckets)."""

    user: UserSummary
    rollup: UserDetail

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user.to_dict(), "rollup": self.rollup.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserView:
        return cls(user=UserSummary.from_dict(d["user"]), rollup=UserDetail.from_dict(d["rollup"]))


@read_operation("user", "/api/tracehouse/v1/users/{user_id}", cli="user", result=UserView)
def user_view(
    store: Store,
    user_id: str,
    experiment_ids: ExperimentIds = None,
    since: SinceMs = None,
    until: UntilMs = None,
    source: Annotated[SummarySource, Param(
        "Summary from the per-user rollups, from the raw traces, or rollups when there are any.",
        choices=("auto", "rollups", "traces"),
    )] = "auto",
) -> UserView:
    """Behaviour of one user: interactions, sessions, response times, errors, tokens, and per day."""
    return UserView(user=user_summary(store, user_id, experiment_ids, source),
                    rollup=get_user(store, user_id, experiment_ids, since, until))  # fmt: skip


def user_summary(
    store: Store, user_id: str, experiment_ids: Sequence[str] | None = None, source: SummarySource = "auto"
) -> UserSummary:
    """How ``user_id`` used the app. ``source="rollups"`` reads the rollups (no trace scan; equal to
    the raw-trace computation once the processors have caught up), ``"traces"`` aggregates the raw
    traces (:func:`user_summary_from_traces`), ``"auto"`` the rollups when the user has any, else
    the traces (a store fed by a sink without the sessionizer has no rollups)."""
    if source not in ("auto", "rollups", "traces"):
        raise InvalidParameterError(f"Invalid value {source!r} for parameter 'source': use auto, rollups or traces")
    if source == "traces":
        return user_summary_from_traces(store, user_id, experiment_ids)
    params = Params()
    where = [f"user_id = {params.add(user_id, 'String')}", *_where(params, experiment_ids, None, None)]
    rows = store.query(
        f"SELECT user_id, {_MERGED} FROM user_rollups_daily WHERE {' AND '.join(where)} GROUP BY user_id",
        params.values,
    )
    if not rows:
        return user_summary_from_traces(store, user_id, experiment_ids) if source == "auto" else UserSummary(user_id)
    return UserRollup.from_row(user_id, rows[0][1:]).to_summary()


def _iso(day: Any) -> str:
    return day.isoformat() if isinstance(day, datetime.date) else str(day)
