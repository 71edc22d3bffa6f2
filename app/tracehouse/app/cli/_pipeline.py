"""The commands that run tracehouse: ``up``, ``serve``, ``demo``, ``migrate`` and ``topics``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from tracehouse.schemas import settings

from ._options import setting_option

DEFAULT_DATA_DIR = "./.tracehouse"


@click.command()
@click.option("--port", default=5000, show_default=True, help="HTTP port of the query API and UI.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP bind address.")
@click.option("--kafka-port", default=9092, show_default=True, help="Port of the embedded Kafka broker.")
@click.option(
    "--data-dir", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False),
    help="Where the embedded ClickHouse (chDB) keeps its data.",
)  # fmt: skip
@click.option("--partitions", default=8, show_default=True, help="Partitions of the traces topic.")
@setting_option(settings.TOPIC_PREFIX, "--topic-prefix", help="Kafka topic prefix.")
@click.option("--demo", is_flag=True, help="Also run `tracehouse demo` traffic once everything is up.")
@click.option("--inactivity-gap-ms", default=30 * 60 * 1000, show_default=True,
              help="A session closes after this long without a turn (event time).")
@click.option("--max-duration-ms", type=int, default=None, help="... or once it has lasted this long.")
@click.option("--infer-sessions", is_flag=True,
              help="Give traces with a user but no session id an inferred session (inferred:<user>:<ms>).")
@setting_option(settings.AUTH_TOKEN, "--auth-token",
                help="Require 'Authorization: Bearer <token>' (or Basic auth with it as password).")
@setting_option(settings.RETENTION_DAYS, "--retention-days", type=int,
                help="Keep raw traces, spans, tags and assessments this many days (0: forever).")
@setting_option(settings.SUMMARY_RETENTION_DAYS, "--summary-retention-days", type=int,
                help="Keep session records and per-user rollups this many days (0: forever).")
@setting_option(settings.BROKER_MEMORY_LIMIT_MB, "--broker-memory-limit-mb", type=float,
                help="Start a new embedded broker generation when it holds this much memory.")
def up(port: int, host: str, kafka_port: int, data_dir: str, partitions: int, topic_prefix: str | None,
       demo: bool, inactivity_gap_ms: int, max_duration_ms: int | None, infer_sessions: bool,
       auth_token: str | None, retention_days: int | None, summary_retention_days: int | None,
       broker_memory_limit_mb: float | None) -> None:  # fmt: skip
    """Run the whole pipeline on the embedded defaults.

    Starts the Tansu Kafka broker, the processors and sink, a chDB store under --data-dir, and the
    HTTP server: web UI, query API, MLflow's tracking API (MLFLOW_TRACKING_URI=http://HOST:PORT)
    and OTLP/HTTP (POST /v1/traces). Ctrl-C drains in-flight events into ClickHouse and stops cleanly.
    """
    from tracehouse.storage import Retention

    from ._up import UpOptions, run_up

    retention_days = settings.RETENTION_DAYS.read(retention_days)
    summary_retention_days = settings.SUMMARY_RETENTION_DAYS.read(summary_retention_days)
    try:
        Retention(retention_days, summary_retention_days)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    opts = UpOptions(host=host, port=port, kafka_port=kafka_port, data_dir=Path(data_dir),
                     partitions=partitions, topic_prefix=topic_prefix, demo=demo,
                     inactivity_gap_ms=inactivity_gap_ms, max_duration_ms=max_duration_ms,
                     infer_sessions=infer_sessions, auth_token=auth_token,
                     retention_days=retention_days, summary_retention_days=summary_retention_days,
                     broker_memory_limit_mb=settings.BROKER_MEMORY_LIMIT_MB.read(broker_memory_limit_mb))  # fmt: skip
    try:
        run_up(opts)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@setting_option(settings.KAFKA_BOOTSTRAP, "--bootstrap", help="Kafka bootstrap servers.")
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

    import tracehouse.producers as sdk

    from ._demo import run_demo, session_turns

    if bootstrap:
        sdk.configure(kafka_bootstrap=bootstrap)
    total = sum(n for *_, n in session_turns(plan))
    with Progress(TextColumn("demo traffic"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("traces", total=total)
        sent = asyncio.run(run_demo(plan, lambda n: bar.advance(task, n)))
    if not sdk.flush(timeout=30):
        raise click.ClickException("timed out waiting for the Kafka broker to acknowledge the demo traces")
    stats = sdk.stats()
    if stats.dropped:
        click.echo(f"warning: {stats.dropped} traces were dropped (SDK buffer full)", err=True)
    return sent


@click.command()
@setting_option(settings.KAFKA_BOOTSTRAP, "--bootstrap", help="Kafka bootstrap servers.")
@setting_option(settings.TOPIC_PREFIX, "--topic-prefix", help="Kafka topic prefix.")
@click.option("--partitions", default=12, show_default=True, help="Partitions of each topic created now.")
def topics(bootstrap: str | None, topic_prefix: str | None, partitions: int) -> None:
    """Create tracehouse's Kafka topics with an explicit partition count (idempotent)."""
    from tracehouse.app.embedded import ensure_topics
    from tracehouse.schemas import Topics

    names = Topics(settings.TOPIC_PREFIX.read(topic_prefix))
    created = asyncio.run(ensure_topics(settings.KAFKA_BOOTSTRAP.read(bootstrap), names, partitions))
    click.echo(f"created {', '.join(created)}" if created else "all topics exist")


@click.command()
@setting_option(settings.STORE_URI, "--store", "store_uri",
                help="clickhouse://user:pass@host:8123/db (or chdb:///path).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", default=5000, show_default=True, help="HTTP port.")
@click.option("--kafka-bootstrap", default=None,
              help="Accept writes (MLflow logging, tags, feedback, OTLP) and publish them to this Kafka. "
                   "Without it (and without TRACEHOUSE_KAFKA_BOOTSTRAP) the server is read-only.")
@setting_option(settings.TOPIC_PREFIX, "--topic-prefix", help="Kafka topic prefix.")
@setting_option(settings.SINK_GROUP, "--sink-group", help="The sink's consumer group, watched for read-your-writes.")
@setting_option(settings.READ_YOUR_WRITES_TIMEOUT_S, "--read-your-writes-timeout", "ryw_timeout", type=float,
                help="Longest a read waits for the sink to store this server's writes, in seconds.")
@setting_option(settings.AUTH_TOKEN, "--auth-token",
                help="Require 'Authorization: Bearer <token>' (or Basic auth with it as password).")
@setting_option(settings.AUTH_USERNAME, "--auth-username",
                help="With --auth-token: the only username Basic auth accepts.")
def serve(store_uri: str | None, host: str, port: int, kafka_bootstrap: str | None, topic_prefix: str | None,
          sink_group: str | None, ryw_timeout: float | None, auth_token: str | None,
          auth_username: str | None) -> None:  # fmt: skip
    """Serve the web UI, the query API and MLflow's tracking API over a ClickHouse store.

    With --kafka-bootstrap it also ingests: MLflow clients (MLFLOW_TRACKING_URI) and OTLP exporters
    (POST /v1/traces) write through it to Kafka, and the sink stores what they sent.
    """
    import uvicorn

    from tracehouse.app.server import AuthConfig, create_app
    from tracehouse.storage import Store

    gateway = None
    bootstrap = kafka_bootstrap or settings.KAFKA_BOOTSTRAP.raw()
    if bootstrap:
        from tracehouse.gateway import Gateway, GatewayConfig

        config = GatewayConfig.resolve(bootstrap=bootstrap, topic_prefix=topic_prefix, sink_group=sink_group,
                                       read_your_writes_timeout_s=ryw_timeout)  # fmt: skip
        gateway = Gateway(config)
    auth = AuthConfig.resolve(token=auth_token, username=auth_username)
    with Store(settings.STORE_URI.read(store_uri)) as store:
        uvicorn.run(create_app(store, gateway=gateway, auth=auth), host=host, port=port, log_level="info")


@click.command()
@setting_option(settings.STORE_URI, "--store", "store_uri", help="chdb:///path or clickhouse://user:pass@host:8123/db.")
@setting_option(settings.RETENTION_DAYS, "--retention-days", type=int,
                help="Keep raw traces, spans, tags and assessments this many days (0: forever).")
@setting_option(settings.SUMMARY_RETENTION_DAYS, "--summary-retention-days", type=int,
                help="Keep session records and per-user rollups this many days (0: forever).")
def migrate(store_uri: str | None, retention_days: int | None, summary_retention_days: int | None) -> None:
    """Create or upgrade the ClickHouse tables (versioned migrations) and set their retention."""
    from tracehouse.storage import Retention, Store, latest_version, set_retention
    from tracehouse.storage import migrate as run_migrations

    uri = settings.STORE_URI.read(store_uri)
    if uri.startswith("chdb://") and not uri.startswith("chdb:///"):  # a relative path: say where it is
        uri = f"chdb://{Path(uri.removeprefix('chdb://')).resolve()}"
    try:
        retention = Retention(settings.RETENTION_DAYS.read(retention_days),
                              settings.SUMMARY_RETENTION_DAYS.read(summary_retention_days))  # fmt: skip
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    with Store(uri) as store:
        applied = run_migrations(store)
        changed = set_retention(store, retention)
    for m in applied:
        click.echo(f"applied {m.version:04d} {m.name}")
    click.echo(f"store {uri} is at schema version {latest_version()}")
    from ._up import retention_text

    kept = retention_text(retention.raw_days, retention.summary_days)
    click.echo(f"retention {'set to' if changed else 'is'}: {kept}")
