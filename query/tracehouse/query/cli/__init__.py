"""The ``tracehouse`` command line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from ._format import FORMATS, render, render_mapping

DEFAULT_DATA_DIR = "./.tracehouse"

_uri_option = click.option(
    "--uri",
    envvar="TRACEHOUSE_URI",
    default=None,
    help="Server URL (default http://127.0.0.1:5000, a running `tracehouse up`), or chdb:///path "
    "or clickhouse://user:pass@host:8123/db to read a store directly. Env: TRACEHOUSE_URI.",
)
_format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help="Output format."
)
_experiment_option = click.option(
    "--experiment-id", "experiment_ids", multiple=True, help="Restrict to these experiments (repeatable)."
)


def _client(uri: str | None) -> Any:
    from tracehouse.query import TraceClient

    return TraceClient(uri)


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracehouse")
def main() -> None:
    """tracehouse: track the users and sessions of GenAI applications at high volume.

    Start everything locally with `tracehouse up`, send traffic with `tracehouse demo`,
    then explore with `search`, `user`, `sessions` and `session`.
    """


@main.command()
@click.option("--port", default=5000, show_default=True, help="HTTP port of the query API and UI.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP bind address.")
@click.option("--kafka-port", default=9092, show_default=True, help="Port of the embedded Kafka broker.")
@click.option(
    "--data-dir", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False),
    help="Where the embedded ClickHouse (chDB) keeps its data.",
)  # fmt: skip
@click.option("--partitions", default=8, show_default=True, help="Partitions of the traces topic.")
@click.option("--topic-prefix", envvar="TRACEHOUSE_TOPIC_PREFIX", default=None, help="Kafka topic prefix.")
@click.option("--demo", is_flag=True, help="Also run `tracehouse demo` traffic once everything is up.")
@click.option("--inactivity-gap-ms", default=30 * 60 * 1000, show_default=True,
              help="A session closes after this long without a turn (event time).")
@click.option("--max-duration-ms", type=int, default=None, help="... or once it has lasted this long.")
@click.option("--infer-sessions", is_flag=True,
              help="Give traces with a user but no session id an inferred session (inferred:<user>:<ms>).")
@click.option("--auth-token", envvar="TRACEHOUSE_AUTH_TOKEN", default=None,
              help="Require 'Authorization: Bearer <token>' (or Basic auth with it as password). "
                   "Env: TRACEHOUSE_AUTH_TOKEN.")
def up(port: int, host: str, kafka_port: int, data_dir: str, partitions: int, topic_prefix: str | None,
       demo: bool, inactivity_gap_ms: int, max_duration_ms: int | None, infer_sessions: bool,
       auth_token: str | None) -> None:  # fmt: skip
    """Run the whole pipeline on the embedded defaults.

    Starts the Tansu Kafka broker, the processors and sink, a chDB store under --data-dir, and the
    HTTP server: web UI, query API, MLflow's tracking API (MLFLOW_TRACKING_URI=http://HOST:PORT)
    and OTLP/HTTP (POST /v1/traces). Ctrl-C drains in-flight events into ClickHouse and stops cleanly.
    """
    from ._up import UpOptions, run_up

    opts = UpOptions(host=host, port=port, kafka_port=kafka_port, data_dir=Path(data_dir),
                     partitions=partitions, topic_prefix=topic_prefix, demo=demo,
                     inactivity_gap_ms=inactivity_gap_ms, max_duration_ms=max_duration_ms,
                     infer_sessions=infer_sessions, auth_token=auth_token)  # fmt: skip
    try:
        run_up(opts)
    except (OSError, RuntimeError) as exc:
        _fail(exc)


@main.command()
@click.option("--bootstrap", envvar="TRACEHOUSE_KAFKA_BOOTSTRAP", default=None,
              help="Kafka bootstrap servers (default localhost:9092). Env: TRACEHOUSE_KAFKA_BOOTSTRAP.")  # fmt: skip
@click.option("--users", default=20, show_default=True, help="Distinct users.")
@click.option("--sessions", default=50, show_default=True, help="Multi-turn sessions.")
@click.option("--max-turns", default=8, show_default=True, help="Most turns in one session.")
@click.option("--error-rate", default=0.05, show_default=True, help="Share of turns that fail.")
@click.option("--latency-scale", default=0.05, show_default=True,
              help="Real seconds slept per simulated second of model latency.")  # fmt: skip
@click.option("--seed", default=7, show_default=True, help="Random seed (same seed, same traffic).")
def demo(bootstrap: str | None, users: int, sessions: int, max_turns: int, error_rate: float,
         latency_scale: float, seed: int) -> None:  # fmt: skip
    """Send realistic synthetic chat traffic through the SDK (users, sessions, errors, latencies)."""
    from ._demo import DemoPlan

    plan = DemoPlan(users=users, sessions=sessions, max_turns=max(2, max_turns), error_rate=error_rate,
                    latency_scale=latency_scale, seed=seed)  # fmt: skip
    sent = run_demo_with_progress(plan, bootstrap)
    click.echo(f"sent {sent} traces for {users} users in {sessions} sessions")


def run_demo_with_progress(plan: Any, bootstrap: str | None) -> int:
    """Run the demo through the SDK with a progress bar; flush before returning."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import tracehouse

    from ._demo import run_demo, session_turns

    if bootstrap:
        tracehouse.configure(kafka_bootstrap=bootstrap)
    total = sum(n for *_, n in session_turns(plan))
    with Progress(TextColumn("demo traffic"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("traces", total=total)
        sent = asyncio.run(run_demo(plan, lambda n: bar.advance(task, n)))
    if not tracehouse.flush(timeout=30):
        raise click.ClickException("timed out waiting for the Kafka broker to acknowledge the demo traces")
    stats = tracehouse.stats()
    if stats.dropped:
        click.echo(f"warning: {stats.dropped} traces were dropped (SDK buffer full)", err=True)
    return sent


@main.command()
@click.argument("filter_string", required=False, default=None, metavar="FILTER")
@click.option("--order-by", multiple=True, help='e.g. "timestamp ASC" (repeatable). Default: newest first.')
@click.option("--max-results", default=100, show_default=True, help="How many traces at most.")
@_experiment_option
@_format_option
@_uri_option
def search(filter_string: str | None, order_by: tuple[str, ...], max_results: int,
           experiment_ids: tuple[str, ...], fmt: str, uri: str | None) -> None:  # fmt: skip
    """Search traces with MLflow's filter syntax.

    Example: tracehouse search "metadata.`mlflow.trace.user` = 'user-0001' AND status = 'ERROR'"
    """
    try:
        with _client(uri) as client:
            traces = client.search_traces(
                experiment_ids=list(experiment_ids) or None, filter_string=filter_string,
                max_results=max_results, order_by=list(order_by) or None, include_spans=False,
            )  # fmt: skip
    except (ValueError, ConnectionError) as exc:
        _fail(exc)
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
        for t in traces
    ]
    render(rows, fmt, title=f"{len(rows)} traces")


@main.command()
@click.argument("user_id")
@click.option("--source", type=click.Choice(["auto", "rollups", "traces"]), default="auto", show_default=True,
              help="Summary from the per-user rollups, from the raw traces, or rollups when there are any.")
@click.option("--days/--no-days", default=True, show_default=True, help="Also list the daily buckets.")
@_experiment_option
@_format_option
@_uri_option
def user(user_id: str, source: str, days: bool, experiment_ids: tuple[str, ...], fmt: str, uri: str | None) -> None:
    """Behaviour of one user: interactions, sessions, response times, errors, tokens, and per day."""
    exps = list(experiment_ids) or None
    try:
        with _client(uri) as client:
            summary = client.user_summary(user_id, experiment_ids=exps, source=source)
            detail = client.get_user(user_id, experiment_ids=exps) if days else None
            recent = client.list_sessions(user_id, experiment_ids=exps, max_results=5)
    except (ValueError, ConnectionError) as exc:
        _fail(exc)
    if fmt != "table":  # the summary's fields, plus the days and the latest sessions
        out: dict[str, Any] = {**summary.to_dict(), "recent_sessions": [s.to_dict() for s in recent]}
        if detail is not None:
            out["days"] = [d.to_dict() for d in detail.days]
        render_mapping(out, fmt)
        return
    render_mapping(summary.to_dict(), fmt, title=f"user {user_id}")
    if detail is not None and detail.days:
        render([_rollup_row(d, "day", d.day) for d in detail.days], fmt, title=f"{len(detail.days)} days")
    if recent.sessions:
        render([{"session_id": s.session_id, "status": s.status, "turns": s.turns, "errors": s.error_turns,
                 "last_ms": s.last_ms, "first_request": s.first_request_preview[:60]}
                for s in recent.sessions], fmt, title="latest sessions")  # fmt: skip


def _rollup_row(r: Any, key: str, value: Any) -> dict[str, Any]:
    return {
        key: value, "interactions": r.interactions, "sessions": r.unique_sessions,
        "avg_ms": round(r.avg_response_time_ms, 1), "p50_ms": round(r.p50_response_time_ms, 1),
        "p95_ms": round(r.p95_response_time_ms, 1), "errors": r.error_count, "error_rate": round(r.error_rate, 4),
        "tokens": r.total_tokens, "last_seen_ms": r.last_seen_ms,
    }  # fmt: skip


@main.command()
@click.option("--order-by", default="interactions DESC", show_default=True,
              help="Any rollup column with ASC/DESC: interactions, unique_sessions, avg_response_time_ms, "
                   "p50_response_time_ms, p95_response_time_ms, error_count, error_rate, first_seen_ms, "
                   "last_seen_ms, input_tokens, output_tokens, total_tokens.")  # fmt: skip
@click.option("--top", "max_results", default=20, show_default=True, help="How many users (at most 500 a page).")
@click.option("--since", type=int, default=None, help="Only days overlapping [since, until) (ms since the epoch).")
@click.option("--until", type=int, default=None, help="See --since.")
@click.option("--page-token", default=None, help="Continue from a previous page.")
@_experiment_option
@_format_option
@_uri_option
def users(order_by: str, max_results: int, since: int | None, until: int | None, page_token: str | None,
          experiment_ids: tuple[str, ...], fmt: str, uri: str | None) -> None:  # fmt: skip
    """Top users by any rollup column (from the per-user rollups the stream processors maintain)."""
    try:
        with _client(uri) as client:
            page = client.list_users(experiment_ids=list(experiment_ids) or None, since=since, until=until,
                                     order_by=order_by, max_results=max_results, page_token=page_token)  # fmt: skip
    except (ValueError, ConnectionError) as exc:
        _fail(exc)
    if fmt != "table":
        render([u.to_dict() for u in page.users], fmt)
    else:
        render([_rollup_row(u, "user_id", u.user_id) for u in page.users], fmt, title=f"{len(page.users)} users")
    if page.next_page_token and fmt == "table":
        click.echo(f"more users: --page-token {page.next_page_token}", err=True)


@main.command()
@click.argument("session_id")
@click.option("--max-results", default=100, show_default=True, help="Turns per page.")
@click.option("--page-token", default=None, help="Continue from a previous page.")
@_experiment_option
@_format_option
@_uri_option
def session(session_id: str, max_results: int, page_token: str | None, experiment_ids: tuple[str, ...],
            fmt: str, uri: str | None) -> None:  # fmt: skip
    """One session: its recorded summary (status, turns, errors, tokens) and its turns in order."""
    try:
        with _client(uri) as client:
            detail = client.get_session(
                session_id, experiment_ids=list(experiment_ids) or None, page_token=page_token, max_results=max_results
            )
    except (ValueError, ConnectionError) as exc:
        _fail(exc)
    data = detail.timeline.to_dict()
    turns = data.pop("turns", [])
    if fmt != "table":  # the turns (the summary is `tracehouse sessions --format json` or the HTTP API)
        render(turns, fmt)
        return
    if detail.summary is not None and not page_token:
        s = detail.summary
        render_mapping({"status": s.status + (" (inferred)" if s.inferred else ""), "users": ", ".join(s.user_ids),
                        "turns": s.turns, "error_turns": s.error_turns, "first_ms": s.first_ms, "last_ms": s.last_ms,
                        "duration_ms": s.duration_ms, "avg_turn_ms": round(s.total_duration_ms / s.turns, 1)
                        if s.turns else 0, "total_tokens": s.total_tokens,
                        "feedback": ", ".join(f"{k}: {v}" for k, v in detail.feedback.items())}, fmt,
                       title=f"session {session_id}")  # fmt: skip
    render(turns, fmt, title=f"session {session_id}: turns")
    token = data.get("next_page_token")
    if token and fmt == "table":
        click.echo(f"more turns: --page-token {token}", err=True)


@main.command()
@click.option("--user", "user_id", default=None, help="Only sessions of this user.")
@click.option("--status", type=click.Choice(["open", "closed"]), default=None, help="Only open or closed sessions.")
@click.option("--since", type=int, default=None, help="Last turn at or after this time (ms since the epoch).")
@click.option("--until", type=int, default=None, help="First turn before this time (ms since the epoch).")
@click.option("--order-by", default=None,
              help="first_ms, last_ms, turns, error_turns or total_duration_ms, with ASC/DESC. Default: last_ms DESC.")
@click.option("--max-results", default=100, show_default=True, help="Sessions per page (at most 500).")
@click.option("--page-token", default=None, help="Continue from a previous page.")
@_experiment_option
@_format_option
@_uri_option
def sessions(user_id: str | None, status: str | None, since: int | None, until: int | None, order_by: str | None,
             max_results: int, page_token: str | None, experiment_ids: tuple[str, ...], fmt: str,
             uri: str | None) -> None:  # fmt: skip
    """List sessions as the sessionizer recorded them (newest record of each), most recent first."""
    try:
        with _client(uri) as client:
            page = client.list_sessions(
                user_id, experiment_ids=list(experiment_ids) or None, status=status, since=since, until=until,
                order_by=order_by, max_results=max_results, page_token=page_token,
            )  # fmt: skip
    except (ValueError, ConnectionError) as exc:
        _fail(exc)
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
    if page.next_page_token and fmt == "table":
        click.echo(f"more sessions: --page-token {page.next_page_token}", err=True)


@main.command(add_help_option=False, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def sink(ctx: click.Context) -> None:
    """Run a sink process: Kafka → ClickHouse, offsets committed after each insert.

    Reads TRACEHOUSE_KAFKA_BOOTSTRAP, TRACEHOUSE_STORE_URI and TRACEHOUSE_TOPIC_PREFIX; every option
    of `python -m tracehouse.processors sink --help` is accepted (e.g. --bootstrap, --store, --group,
    --migrate). Run several in one consumer group to share the partitions.
    """
    from tracehouse.processors._cli import main as processors_main

    sys.exit(processors_main(["sink", *ctx.args]))


@main.command(add_help_option=False, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def sessionizer(ctx: click.Context) -> None:
    """Run a sessionizer worker (faust): traces → sessions.v1 records and user-rollups.v1 facts.

    Reads TRACEHOUSE_KAFKA_BOOTSTRAP and TRACEHOUSE_TOPIC_PREFIX; every option of
    `python -m tracehouse.processors.sessions --help` is accepted (e.g. --app-id, --partitions,
    --infer-sessions). Run several with one --app-id to share the partitions. Stops on SIGTERM.
    """
    from tracehouse.processors.sessions._app import main as sessionizer_main

    sys.exit(sessionizer_main(ctx.args))


@main.command()
@click.option("--bootstrap", envvar="TRACEHOUSE_KAFKA_BOOTSTRAP", default="localhost:9092", show_default=True,
              help="Kafka bootstrap servers. Env: TRACEHOUSE_KAFKA_BOOTSTRAP.")  # fmt: skip
@click.option("--topic-prefix", envvar="TRACEHOUSE_TOPIC_PREFIX", default=None, help="Kafka topic prefix.")
@click.option("--partitions", default=12, show_default=True, help="Partitions of each topic created now.")
def topics(bootstrap: str, topic_prefix: str | None, partitions: int) -> None:
    """Create tracehouse's Kafka topics with an explicit partition count (idempotent)."""
    from tracehouse.embedded import ensure_topics
    from tracehouse.schemas import DEFAULT_TOPIC_PREFIX, Topics

    names = Topics(topic_prefix if topic_prefix is not None else DEFAULT_TOPIC_PREFIX)
    created = asyncio.run(ensure_topics(bootstrap, names, partitions))
    click.echo(f"created {', '.join(created)}" if created else "all topics exist")


@main.command()
@click.option("--store", "store_uri", envvar="TRACEHOUSE_STORE_URI", required=True,
              help="clickhouse://user:pass@host:8123/db (or chdb:///path). Env: TRACEHOUSE_STORE_URI.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", default=5000, show_default=True, help="HTTP port.")
@click.option("--kafka-bootstrap", envvar="TRACEHOUSE_KAFKA_BOOTSTRAP", default=None,
              help="Accept writes (MLflow logging, tags, feedback, OTLP) and publish them to this Kafka. "
                   "Without it the server is read-only. Env: TRACEHOUSE_KAFKA_BOOTSTRAP.")
@click.option("--topic-prefix", envvar="TRACEHOUSE_TOPIC_PREFIX", default=None, help="Kafka topic prefix.")
@click.option("--sink-group", envvar="TRACEHOUSE_SINK_GROUP", default=None,
              help="The sink's consumer group, watched for read-your-writes (default tracehouse-sink).")
@click.option("--read-your-writes-timeout", "ryw_timeout", type=float, default=None,
              help="Longest a read waits for the sink to store this server's writes, in seconds (default 10). "
                   "Env: TRACEHOUSE_READ_YOUR_WRITES_TIMEOUT_S.")
@click.option("--auth-token", envvar="TRACEHOUSE_AUTH_TOKEN", default=None,
              help="Require 'Authorization: Bearer <token>' (or Basic auth with it as password). "
                   "Env: TRACEHOUSE_AUTH_TOKEN.")
@click.option("--auth-username", envvar="TRACEHOUSE_AUTH_USERNAME", default=None,
              help="With --auth-token: the only username Basic auth accepts (default: any).")
def serve(store_uri: str, host: str, port: int, kafka_bootstrap: str | None, topic_prefix: str | None,
          sink_group: str | None, ryw_timeout: float | None, auth_token: str | None,
          auth_username: str | None) -> None:  # fmt: skip
    """Serve the web UI, the query API and MLflow's tracking API over a ClickHouse store.

    With --kafka-bootstrap it also ingests: MLflow clients (MLFLOW_TRACKING_URI) and OTLP exporters
    (POST /v1/traces) write through it to Kafka, and the sink stores what they sent.
    """
    import uvicorn

    from tracehouse.storage import Store

    from .._auth import AuthConfig
    from .._server import create_app

    gateway = None
    if kafka_bootstrap:
        from tracehouse.gateway import Gateway, GatewayConfig

        config = GatewayConfig.resolve(bootstrap=kafka_bootstrap, topic_prefix=topic_prefix, sink_group=sink_group,
                                       read_your_writes_timeout_s=ryw_timeout)  # fmt: skip
        gateway = Gateway(config)
    auth = AuthConfig.resolve(token=auth_token, username=auth_username)
    with Store(store_uri) as store:
        uvicorn.run(create_app(store, gateway=gateway, auth=auth), host=host, port=port, log_level="info")


@main.command()
@click.option("--store", "store_uri", envvar="TRACEHOUSE_STORE_URI", default=None,
              help="chdb:///path or clickhouse://user:pass@host:8123/db "
                   f"(default chdb://{DEFAULT_DATA_DIR}/chdb). Env: TRACEHOUSE_STORE_URI.")  # fmt: skip
def migrate(store_uri: str | None) -> None:
    """Create or upgrade the ClickHouse tables (versioned migrations)."""
    from tracehouse.storage import Store, latest_version
    from tracehouse.storage import migrate as run_migrations

    uri = store_uri or f"chdb://{Path(DEFAULT_DATA_DIR, 'chdb').resolve()}"
    with Store(uri) as store:
        applied = run_migrations(store)
    for m in applied:
        click.echo(f"applied {m.version:04d} {m.name}")
    click.echo(f"store {uri} is at schema version {latest_version()}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
