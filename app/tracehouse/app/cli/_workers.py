"""The commands that run the stream processors as processes: ``sink``, ``sessionizer`` and ``dlq``.

Each stops cleanly on SIGTERM/SIGINT: the sink drains its batches into ClickHouse and commits; the
sessionizer flushes what it folded and commits. ``python -m tracehouse.processors`` and
``python -m tracehouse.processors.sessions`` run these same commands.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import click

from tracehouse.schemas import settings

from ._options import setting_option

log = logging.getLogger("tracehouse.sink")
FINAL_FLUSH_TIMEOUT_S = 30.0
#: Exit status of a sink stopped by its refusal limit, and of a replay stopped by ``stop-on-error``.
EXIT_REFUSALS = 3
#: A ClickHouse write passed the sink's write timeout.
EXIT_STUCK = 4


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
@click.option("--write-timeout", type=float, default=None,
              help="A ClickHouse write running longer than this stops the sink (exit 4) for a restart.")
@setting_option(settings.SINK_MAX_EVENT_BYTES, "--max-event-bytes", type=int,
                help="A longer event line is dead-lettered.")
@setting_option(settings.SINK_MAX_CONSECUTIVE_REFUSED, "--max-consecutive-refused", type=int,
                help="Stop after this many refused lines in a row (0: never).")
@setting_option(settings.SINK_MAX_REFUSED_RATIO, "--max-refused-ratio", type=float,
                help="Stop when more than this share of the latest lines was refused (1: never).")
@setting_option(settings.SINK_REFUSED_WINDOW, "--refused-window", type=int,
                help="How many of the latest lines --max-refused-ratio looks at.")
@click.option("--migrate", "migrate_first", is_flag=True, help="Apply pending ClickHouse migrations before consuming.")
@click.option("--log-level", default="INFO", show_default=True, help="Logging level.")
def sink(bootstrap: str | None, topic_prefix: str | None, store: str | None, group: str | None,
         dlq_topic: str | None, migrate_first: bool, log_level: str, **batching: Any) -> None:  # fmt: skip
    """Run a sink: Kafka → ClickHouse, offsets committed only after the insert that covers them.

    Run several in one consumer group to share the partitions. SIGTERM/SIGINT drains and commits.
    Exits 3, committing nothing more, when too many lines in a row (or of the latest lines) are
    refused: see docs/dead-letters.md.
    """
    from tracehouse.processors import SinkConfig

    names = {"drain_timeout": "drain_timeout_s", "write_timeout": "write_timeout_s"}
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
    from tracehouse.schemas.errors import DeadLetterLimitExceeded

    try:
        asyncio.run(_run_sink(config, migrate_first))
    except DeadLetterLimitExceeded as exc:
        click.echo(f"tracehouse sink: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_REFUSALS) from None


async def _run_sink(config: Any, migrate_first: bool) -> None:
    from tracehouse.processors import Sink
    from tracehouse.schemas.errors import WriteStuck
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
        try:
            await worker.run()
        except WriteStuck as exc:
            # The stuck write's thread holds the store and cannot be cancelled: leave now, uncommitted,
            # for a supervisor to restart the sink, which replays from the committed offsets.
            log.error("%s", exc)
            logging.shutdown()
            os._exit(EXIT_STUCK)
    finally:
        await asyncio.to_thread(store.close)


def _dead_letter_topic(bootstrap: str | None, topic_prefix: str | None, dlq_topic: str | None) -> tuple[str, str]:
    from tracehouse.processors import SinkConfig

    config = SinkConfig.resolve(bootstrap=bootstrap, topic_prefix=topic_prefix)
    return config.bootstrap, dlq_topic or config.dead_letter_topic


def _dlq_options(command: Any) -> Any:
    for option in reversed((
        setting_option(settings.KAFKA_BOOTSTRAP, "--bootstrap", help="Kafka bootstrap servers."),
        setting_option(settings.TOPIC_PREFIX, "--topic-prefix", help="Kafka topic prefix."),
        click.option("--dlq-topic", default=None, help="Dead-letter topic (default <prefix>dlq.v1)."),
        click.option("--group", default=None, help="Consumer group whose committed offsets mark letters as handled "
                                                   "[default tracehouse-dlq-replay]."),
        click.option("--log-level", default="WARNING", show_default=True, help="Logging level."),
    )):  # fmt: skip
        command = option(command)
    return command


@click.group()
def dlq() -> None:
    """The dead-letter topic: list refused lines with their reasons and origins, replay or drop them."""


@dlq.command("list")
@_dlq_options
@click.option("--reason", default=None, help="Only letters whose reason contains this text (any case).")
@click.option("--origin-topic", default=None, help="Only letters refused from this topic.")
@click.option("--pending", is_flag=True, help="Only letters the replay group has not handled yet.")
@click.option("--limit", type=int, default=None, help="Show at most this many letters (after the filters).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (value, reason, origin...).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Stop reading after this long.")
def dlq_list(bootstrap: str | None, topic_prefix: str | None, dlq_topic: str | None, group: str | None,
             log_level: str, reason: str | None, origin_topic: str | None, pending: bool, limit: int | None,
             as_json: bool, timeout: float) -> None:  # fmt: skip
    """Show the dead letters: where each refused line came from, why, and whether it was handled."""
    from tracehouse.processors import DEFAULT_REPLAY_GROUP, handled_offsets, read_dlq

    _logging(log_level)
    bootstrap, topic = _dead_letter_topic(bootstrap, topic_prefix, dlq_topic)

    async def read() -> tuple[list[Any], dict[int, int]]:
        letters = await read_dlq(bootstrap, topic, timeout_s=timeout)
        return letters, await handled_offsets(bootstrap, topic, group or DEFAULT_REPLAY_GROUP)

    letters, handled = asyncio.run(read())
    rows = []
    for letter in letters:
        done = letter.dlq_offset is not None and letter.dlq_offset < handled.get(letter.dlq_partition, 0)
        if reason is not None and reason.lower() not in letter.reason.lower():
            continue
        if origin_topic is not None and letter.origin_topic != origin_topic:
            continue
        if pending and done:
            continue
        rows.append((letter, done))
        if limit is not None and len(rows) >= limit:
            break
    if as_json:
        for letter, done in rows:
            sys.stdout.write(json.dumps(_letter_json(letter, done)) + "\n")
        return
    from ._format import render

    render([_letter_row(letter, done) for letter, done in rows], "table",
           title=f"{topic}: {len(rows)} of {len(letters)} dead letters")  # fmt: skip


def _letter_json(letter: Any, handled: bool) -> dict[str, Any]:
    """A letter as one JSON object (the value as text, or base64 when it is not UTF-8)."""
    try:
        value: str = letter.value.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(letter.value).decode(), "base64"
    origin = {"topic": letter.origin_topic, "partition": letter.origin_partition,
              "offset": letter.origin_offset, "line": letter.origin_line}  # fmt: skip
    return {"reason": letter.reason, "origin": origin, "time_ms": letter.time_ms,
            "truncated_from": letter.truncated_from, "encoding": encoding, "value": value,
            "dlq": {"partition": letter.dlq_partition, "offset": letter.dlq_offset}, "handled": handled}  # fmt: skip


def _letter_row(letter: Any, handled: bool) -> dict[str, Any]:
    when = datetime.datetime.fromtimestamp(letter.time_ms / 1000, datetime.UTC) if letter.time_ms >= 0 else None
    line = "whole message" if letter.whole_message else f"line {letter.origin_line}"
    size = f"{letter.truncated_from} B (truncated)" if letter.truncated_from is not None else f"{len(letter.value)} B"
    return {
        "dlq": f"{letter.dlq_partition}:{letter.dlq_offset}",
        "status": "handled" if handled else "pending",
        "dead-lettered": when.strftime("%Y-%m-%d %H:%M:%S") if when else "",
        "origin": f"{letter.origin_topic}[{letter.origin_partition}] @{letter.origin_offset}, {line}",
        "size": size,
        "reason": letter.reason if len(letter.reason) <= 200 else letter.reason[:197] + "...",
    }


@dlq.command("replay")
@_dlq_options
@click.option("--policy", type=click.Choice(["reinsert", "drop", "stop-on-error"]), required=True,
              help="reinsert: republish each letter's line to its origin topic; drop: mark letters handled "
                   "without republishing; stop-on-error: reinsert, but stop at the first letter the sink "
                   "would refuse again.")  # fmt: skip
@click.option("--max", "max_letters", type=int, default=None, help="Handle at most this many letters.")
@setting_option(settings.SINK_MAX_EVENT_BYTES, "--max-event-bytes", type=int,
                help="The sink's event size limit, which stop-on-error validates with.")  # fmt: skip
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Stop when nothing was read for this long.")  # fmt: skip
def dlq_replay(bootstrap: str | None, topic_prefix: str | None, dlq_topic: str | None, group: str | None,
               log_level: str, policy: str, max_letters: int | None, max_event_bytes: int | None,
               timeout: float) -> None:  # fmt: skip
    """Replay the dead letters not handled yet, in order, and mark them handled.

    Handled means the replay group committed past them, only after what was republished was
    acknowledged: running it twice replays nothing twice. Exits 3 when stop-on-error stopped.
    """
    from tracehouse.processors import DEFAULT_REPLAY_GROUP, replay_dead_letters
    from tracehouse.schemas.kafka import producer_compression

    _logging(log_level)
    bootstrap, topic = _dead_letter_topic(bootstrap, topic_prefix, dlq_topic)
    report = asyncio.run(replay_dead_letters(
        bootstrap, topic, policy, max_letters=max_letters, group=group or DEFAULT_REPLAY_GROUP,
        max_event_bytes=settings.SINK_MAX_EVENT_BYTES.read(max_event_bytes),
        compression=producer_compression(settings.KAFKA_COMPRESSION.read()), idle_timeout_s=timeout,
    ))  # fmt: skip
    click.echo(
        f"{topic}: read {report.read} letters: {report.reinserted} reinserted, {report.dropped} dropped, "
        f"{report.duplicates} duplicates of letters already handled in this run, "
        f"{len(report.unreplayable)} not replayable; {report.remaining} left"
    )
    for letter, why in report.unreplayable:
        click.echo(f"  skipped {_where(letter)}: {why}")
    if report.stopped_at is not None:
        click.echo(f"stopped at {_where(report.stopped_at)}: {report.stop_reason}", err=True)
        click.echo("  fix its cause and replay again, or skip it with --policy drop --max 1", err=True)
        raise click.exceptions.Exit(EXIT_REFUSALS)


def _where(letter: Any) -> str:
    line = "whole message" if letter.whole_message else f"line {letter.origin_line}"
    return (f"dead letter {letter.dlq_partition}:{letter.dlq_offset} "
            f"(from {letter.origin_topic}[{letter.origin_partition}] @{letter.origin_offset}, {line})")  # fmt: skip


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
        # Not standalone, click returns the code of a ``click.exceptions.Exit`` instead of raising it.
        result = command.main(args=list(argv) if argv is not None else None, prog_name=prog_name,
                              standalone_mode=False)  # fmt: skip
        if isinstance(result, int):
            return result
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
