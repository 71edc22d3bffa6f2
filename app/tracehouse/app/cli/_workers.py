"""The commands that run the stream processors as processes: ``sink``, ``sessionizer`` and ``dlq``.

Each stops cleanly on SIGTERM/SIGINT: the sink drains its batches into ClickHouse and commits; the
sessionizer flushes what it folded and commits. ``python -m tracehouse.processors`` and
``python -m tracehouse.processors.sessions`` run these same commands.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import click

from tracehouse.schemas import settings

from ._options import setting_option

log = logging.getLogger("tracehouse.sink")
FINAL_FLUSH_TIMEOUT_S = 30.0


def _logging(level: str, quiet: tuple[str, ...] = ()) -> str:
    name = str(level).upper()
    logging.basicConfig(level=getattr(logging, name, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    for chatty in quiet:  # faust, mode and aiokafka are chatty at INFO
        logging.getLogger(chatty).setLevel(max(logging.getLevelName(name), logging.WARNING))
    return name


@click.command()
@setting_option(settings.KAFKA_BOOTSTRAP, "--bootstrap", help="Kafka bootstrap servers.")
@setting_option(settings.TOPIC_PREFIX, "--topic-prefix", help="Kafka topic prefix.")
@setting_option(settings.STORE_URI, "--store", help="chdb:///path or clickhouse://user:pass@host:8123/db.")
@setting_option(settings.SINK_GROUP, "--group", help="Consumer group (the ledger and dedup tokens are scoped by it).")
@click.option("--dlq-topic", default=None, help="Dead-letter topic (default <prefix>dlq.v1).")
@click.option("--max-batch-rows", type=int, default=None, help="Flush a partition's batch at this many rows.")
@click.option("--max-batch-bytes", type=int, default=None, help="... or this many bytes of envelopes.")
@click.option("--max-batch-age-ms", type=int, default=None, help="... or when its first record is this old.")
@click.option("--max-poll-records", type=int, default=None, help="Kafka messages per fetch.")
@click.option("--poll-timeout-ms", type=int, default=None, help="Longest wait of one fetch.")
@click.option("--session-timeout-ms", type=int, default=None, help="Consumer group session timeout.")
@click.option("--heartbeat-interval-ms", type=int, default=None, help="Consumer group heartbeat interval.")
@click.option("--drain-timeout", type=float, default=None, help="Seconds a stop may spend flushing.")
@click.option("--migrate", "migrate_first", is_flag=True, help="Apply pending ClickHouse migrations before consuming.")
@click.option("--log-level", default="INFO", show_default=True, help="Logging level.")
def sink(bootstrap: str | None, topic_prefix: str | None, store: str | None, group: str | None,
         dlq_topic: str | None, migrate_first: bool, log_level: str, **batching: Any) -> None:  # fmt: skip
    """Run a sink: Kafka → ClickHouse, offsets committed only after the insert that covers them.

    Run several in one consumer group to share the partitions. SIGTERM/SIGINT drains and commits.
    """
    from tracehouse.processors import SinkConfig

    names = {"drain_timeout": "drain_timeout_s"}
    overrides = {names.get(k, k): v for k, v in batching.items() if v is not None}
    if dlq_topic is not None:
        overrides["dlq_topic"] = dlq_topic
    config = SinkConfig.resolve(bootstrap=bootstrap, topic_prefix=topic_prefix, store_uri=store, group_id=group,
                                **overrides)  # fmt: skip
    _logging(log_level)
    # The sink keeps batches of thousands of decoded events alive; the default gen-0 threshold (700
    # allocations) makes the collector rescan them constantly (measured: ~15 % of throughput).
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    asyncio.run(_run_sink(config, migrate_first))


async def _run_sink(config: Any, migrate_first: bool) -> None:
    from tracehouse.processors import Sink
    from tracehouse.storage import Store, migrate

    store = await asyncio.to_thread(Store, config.store_uri)
    try:
        if migrate_first:
            applied = await asyncio.to_thread(migrate, store)
            if applied:
                log.info("applied migrations %s", [m.version for m in applied])
        worker = Sink(config, store)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
        await worker.run()
    finally:
        await asyncio.to_thread(store.close)


@click.command()
@setting_option(settings.KAFKA_BOOTSTRAP, "--bootstrap", help="Kafka bootstrap servers.")
@setting_option(settings.TOPIC_PREFIX, "--topic-prefix", help="Kafka topic prefix.")
@click.option("--limit", type=int, default=None, help="Stop after this many letters.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Stop reading after this long.")
@click.option("--log-level", default="WARNING", show_default=True, help="Logging level.")
def dlq(bootstrap: str | None, topic_prefix: str | None, limit: int | None, timeout: float, log_level: str) -> None:
    """Print the dead-letter topic as JSON lines: each refused line or message with its reason and origin."""
    from tracehouse.processors import SinkConfig, read_dlq

    _logging(log_level)
    config = SinkConfig.resolve(bootstrap=bootstrap, topic_prefix=topic_prefix)
    letters = asyncio.run(read_dlq(config.bootstrap, config.dead_letter_topic, limit=limit, timeout_s=timeout))
    for letter in letters:
        try:
            value: str = letter.value.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            value, encoding = base64.b64encode(letter.value).decode(), "base64"
        origin = {"topic": letter.origin_topic, "partition": letter.origin_partition,
                  "offset": letter.origin_offset, "line": letter.origin_line}  # fmt: skip
        sys.stdout.write(json.dumps({"reason": letter.reason, "origin": origin, "time_ms": letter.time_ms,
                                     "truncated_from": letter.truncated_from, "encoding": encoding,
                                     "value": value}) + "\n")  # fmt: skip


@click.command()
@setting_option(settings.KAFKA_BOOTSTRAP, "--bootstrap", help="Kafka bootstrap servers.")
@setting_option(settings.TOPIC_PREFIX, "--topic-prefix", help="Kafka topic prefix.")
@click.option("--app-id", default="tracehouse-sessionizer", show_default=True,
              help="faust app id and consumer group; run several with one id to share the partitions.")
@click.option("--partitions", type=int, default=8, show_default=True, help="Partitions of traces.v1.")
@click.option("--rollup-partitions", type=int, default=None,
              help="Partitions of user-rollups.v1 (default: --partitions).")
@click.option("--no-rollups", is_flag=True, help="Do not emit user_trace facts (no per-user rollups).")
@click.option("--infer-sessions", is_flag=True, help="Give traces with a user but no session an inferred session.")
@click.option("--state-retention-ms", type=int, default=None, help="Forget closed sessions this much later.")
@click.option("--flush-interval-ms", type=int, default=500, show_default=True, help="Emit and commit this often.")
@setting_option(settings.SESSION_GAP_MS, "--inactivity-gap-ms", type=int,
                help="A session closes after this long without a turn (event time).")
@setting_option(settings.SESSION_MAX_MS, "--max-duration-ms", type=int, help="... or once it has lasted this long.")
@click.option("--datadir", default=".tracehouse/sessionizer", show_default=True, help="faust's data directory.")
@click.option("--store", "store_uri", default=None,
              help="Read sessions back from this store: continue open sessions after the broker lost its data, "
                   "and evict closed ones (reloaded if they reopen). A ClickHouse server "
                   "(clickhouse://user:pass@host:8123/db): chDB allows one process per path, so with chDB run the "
                   "roles in one process (tracehouse up).")
@click.option("--loglevel", "--log-level", "log_level", default="INFO", show_default=True, help="Logging level.")
def sessionizer(bootstrap: str | None, topic_prefix: str | None, app_id: str, partitions: int,
                rollup_partitions: int | None, no_rollups: bool, infer_sessions: bool,
                state_retention_ms: int | None, flush_interval_ms: int, inactivity_gap_ms: int | None,
                max_duration_ms: int | None, datadir: str, store_uri: str | None, log_level: str) -> None:  # fmt: skip
    """Run a sessionizer worker (faust): traces → sessions.v1 records and user-rollups.v1 facts.

    Run several with one --app-id to share the partitions. SIGTERM/SIGINT flushes what was folded and
    commits it before the worker stops.
    """
    from tracehouse.processors.sessions import SessionizerConfig

    config = SessionizerConfig.resolve(
        bootstrap=bootstrap, topic_prefix=topic_prefix, app_id=app_id, partitions=partitions,
        flush_interval_ms=flush_interval_ms, inactivity_gap_ms=inactivity_gap_ms, max_duration_ms=max_duration_ms,
        datadir=datadir, rollup_partitions=rollup_partitions or partitions, emit_rollups=not no_rollups,
        infer_sessions=infer_sessions, state_retention_ms=state_retention_ms,
    )  # fmt: skip
    level = _logging(log_level, quiet=("faust", "mode", "aiokafka"))
    _run_faust_worker(config, level, store_uri)


def _run_faust_worker(config: Any, level: str, store_uri: str | None = None) -> None:
    import faust

    from tracehouse.processors.sessions import Sessionizer
    from tracehouse.storage import Store

    worker_state = Sessionizer(config, Store(store_uri) if store_uri else None)

    class _Worker(faust.Worker):
        async def on_stop(self) -> None:
            # A graceful stop first flushes what was folded (records, facts, state) and acks it; the
            # consumer's own stop then commits those offsets, so a restart replays nothing. The
            # worker's children (the app, its consumer) stop only after this returns.
            try:
                await asyncio.wait_for(worker_state.flush(), FINAL_FLUSH_TIMEOUT_S)
            except Exception as exc:  # the next owner replays from the committed offsets: nothing is lost
                logging.getLogger("tracehouse.sessionizer").warning(
                    "final flush failed, the next owner replays its events: %r", exc)
            await super().on_stop()

    worker = _Worker(
        worker_state.app, loglevel=level, quiet=True, redirect_stdouts=False, override_logging=False, console_port=0
    )
    worker.execute_from_commandline()  # installs signal handlers, owns the loop; returns on SIGTERM


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def processors() -> None:
    """Run a sink, or read the dead-letter topic."""


processors.add_command(sink)
processors.add_command(dlq)


def run_command(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a click command as a program and return its exit code (instead of exiting)."""
    try:
        command.main(args=list(argv) if argv is not None else None, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return 0


def processors_main(argv: Sequence[str] | None = None) -> int:
    """``python -m tracehouse.processors sink|dlq ...``; returns the exit code."""
    return run_command(processors, argv, "python -m tracehouse.processors")


def sessionizer_main(argv: Sequence[str] | None = None) -> int:
    """``python -m tracehouse.processors.sessions ...``; returns the exit code."""
    return run_command(sessionizer, argv, "python -m tracehouse.processors.sessions")
