"""How the query commands print their results: one presenter per read operation that wants more than
JSON. A presenter may add presentation options (``--days``); it never changes what is read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from tracehouse.query import SessionDetail, SessionPage, TracePage, UserPage, UserRollup, UserView
from tracehouse.schemas.mlflow import Trace

from ._format import render, render_mapping

Show = Callable[[Any, str, click.Context], None]


@dataclass(frozen=True, slots=True)
class Presenter:
    show: Show
    options: Sequence[click.Option] = field(default_factory=tuple)


def _more(token: str | None, fmt: str, what: str) -> None:
    if token and fmt == "table":
        click.echo(f"more {what}: --page-token {token}", err=True)


def _search(page: TracePage, fmt: str, ctx: click.Context) -> None:
    rows = [
        {
            "trace_id": t.info.trace_id,
            "timestamp_ms": t.info.timestamp_ms,
            "execution_time_ms": t.info.execution_time_ms,
            "status": t.info.state.value,
            "user": t.info.trace_metadata.get("mlflow.trace.user"),
            "session": t.info.trace_metadata.get("mlflow.trace.session"),
            "name": t.info.tags.get("mlflow.traceName"),
            "request": t.info.request_preview if fmt != "table" else (t.info.request_preview or "")[:60],
        }
        for t in page.traces
    ]
    render(rows, fmt, title=f"{len(rows)} traces")


def _trace(trace: Trace, fmt: str, ctx: click.Context) -> None:
    if fmt != "table":
        render_mapping(trace.to_dict(), fmt)
        return
    info = trace.info
    render_mapping({
        "trace_id": info.trace_id, "status": info.state.value, "timestamp_ms": info.timestamp_ms,
        "execution_time_ms": info.execution_time_ms, "user": info.trace_metadata.get("mlflow.trace.user"),
        "session": info.trace_metadata.get("mlflow.trace.session"), "request": info.request_preview,
        "response": info.response_preview, "spans": len(trace.data.spans),
    }, fmt, title=f"trace {info.trace_id}")  # fmt: skip


def rollup_row(r: UserRollup, key: str, value: Any) -> dict[str, Any]:
    return {
        key: value, "interactions": r.interactions, "sessions": r.unique_sessions,
        "avg_ms": round(r.avg_response_time_ms, 1), "p50_ms": round(r.p50_response_time_ms, 1),
        "p95_ms": round(r.p95_response_time_ms, 1), "errors": r.error_count, "error_rate": round(r.error_rate, 4),
        "tokens": r.total_tokens, "last_seen_ms": r.last_seen_ms,
    }  # fmt: skip


def _user(view: UserView, fmt: str, ctx: click.Context) -> None:
    summary, detail = view.user, view.rollup
    days: bool = ctx.obj["options"]["days"]
    exps = ctx.obj["params"].get("experiment_ids")
    recent = ctx.obj["client"].list_sessions(summary.user_id, experiment_ids=exps, max_results=5)
    if fmt != "table":  # the summary's fields, plus the days and the latest sessions
        out: dict[str, Any] = {**summary.to_dict(), "recent_sessions": [s.to_dict() for s in recent]}
        if days:
            out["days"] = [d.to_dict() for d in detail.days]
        render_mapping(out, fmt)
        return
    render_mapping(summary.to_dict(), fmt, title=f"user {summary.user_id}")
    if days and detail.days:
        render([rollup_row(d, "day", d.day) for d in detail.days], fmt, title=f"{len(detail.days)} days")
    if recent.sessions:
        render([{"session_id": s.session_id, "status": s.status, "turns": s.turns, "errors": s.error_turns,
                 "last_ms": s.last_ms, "first_request": s.first_request_preview[:60]}
                for s in recent.sessions], fmt, title="latest sessions")  # fmt: skip


def _users(page: UserPage, fmt: str, ctx: click.Context) -> None:
    if fmt != "table":
        render([u.to_dict() for u in page.users], fmt)
    else:
        render([rollup_row(u, "user_id", u.user_id) for u in page.users], fmt, title=f"{len(page.users)} users")
    _more(page.next_page_token, fmt, "users")


def _session(detail: SessionDetail, fmt: str, ctx: click.Context) -> None:
    data = detail.timeline.to_dict()
    turns = data.pop("turns", [])
    if fmt != "table":  # the turns (the summary is `tracehouse sessions --format json` or the HTTP API)
        render(turns, fmt)
        return
    if detail.summary is not None and not ctx.obj["params"].get("page_token"):
        s = detail.summary
        render_mapping({"status": s.status + (" (inferred)" if s.inferred else ""), "users": ", ".join(s.user_ids),
                        "turns": s.turns, "error_turns": s.error_turns, "first_ms": s.first_ms, "last_ms": s.last_ms,
                        "duration_ms": s.duration_ms, "avg_turn_ms": round(s.total_duration_ms / s.turns, 1)
                        if s.turns else 0, "total_tokens": s.total_tokens,
                        "feedback": ", ".join(f"{k}: {v}" for k, v in detail.feedback.items())}, fmt,
                       title=f"session {detail.session_id}")  # fmt: skip
    render(turns, fmt, title=f"session {detail.session_id}: turns")
    _more(data.get("next_page_token"), fmt, "turns")


def _sessions(page: SessionPage, fmt: str, ctx: click.Context) -> None:
    rows = [
        {
            "session_id": s.session_id,
            "user": s.user_id,
            "status": s.status,
            "turns": s.turns,
            "error_turns": s.error_turns,
            "first_ms": s.first_ms,
            "last_ms": s.last_ms,
            "total_duration_ms": s.total_duration_ms,
            "total_tokens": s.total_tokens,
            "first_request": s.first_request_preview if fmt != "table" else s.first_request_preview[:60],
        }
        for s in page.sessions
    ]
    render(rows, fmt, title=f"{len(rows)} sessions")
    _more(page.next_page_token, fmt, "sessions")


PRESENTERS: dict[str, Presenter] = {
    "search": Presenter(_search),
    "trace": Presenter(_trace),
    "user": Presenter(_user, (click.Option(["--days/--no-days"], default=True, show_default=True,
                                           help="Also list the daily buckets."),)),
    "users": Presenter(_users),
    "session": Presenter(_session),
    "sessions": Presenter(_sessions),
}
