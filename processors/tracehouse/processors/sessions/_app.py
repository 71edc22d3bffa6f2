"""``python -m tracehouse.processors.sessions``: the sessionizer as a ``faust.Worker`` until SIGTERM/SIGINT,
which flushes what was folded and commits its offsets before the worker stops."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from ._config import DEFAULT_PARTITIONS, DEFAULT_SESSIONIZER_ID, SessionizerConfig

log = logging.getLogger(__name__)
FINAL_FLUSH_TIMEOUT_S = 30.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tracehouse.processors.sessions",
        description="Fold traces.v1 into session records on sessions.v1 (a faust worker; stops on SIGTERM).",
    )
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $TRACEHOUSE_KAFKA_BOOTSTRAP)")
    p.add_argument("--topic-prefix", help="topic prefix (default: $TRACEHOUSE_TOPIC_PREFIX or 'tracehouse.')")
    p.add_argument("--app-id", default=DEFAULT_SESSIONIZER_ID, help="faust app id and consumer group")
    p.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="partitions of traces.v1")
    p.add_argument(
        "--rollup-partitions", type=int, default=None, help="partitions of user-rollups.v1 (default: --partitions)"
    )
    p.add_argument("--no-rollups", action="store_true", help="do not emit user_trace facts (no per-user rollups)")
    p.add_argument(
        "--infer-sessions", action="store_true", help="give traces with a user but no session an inferred session"
    )
    p.add_argument("--state-retention-ms", type=int, default=None, help="forget closed sessions this much later")
    p.add_argument("--flush-interval-ms", type=int, default=500)
    p.add_argument("--inactivity-gap-ms", type=int, default=30 * 60 * 1000)
    p.add_argument("--max-duration-ms", type=int, default=None)
    p.add_argument("--datadir", default=".tracehouse/sessionizer")
    p.add_argument("--loglevel", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = SessionizerConfig.resolve(
        bootstrap=args.bootstrap, topic_prefix=args.topic_prefix, app_id=args.app_id, partitions=args.partitions,
        flush_interval_ms=args.flush_interval_ms, inactivity_gap_ms=args.inactivity_gap_ms,
        max_duration_ms=args.max_duration_ms, datadir=args.datadir,
        rollup_partitions=args.rollup_partitions or args.partitions, emit_rollups=not args.no_rollups,
        infer_sessions=args.infer_sessions, state_retention_ms=args.state_retention_ms,
    )  # fmt: skip
    level = str(args.loglevel).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # faust and aiokafka are chatty at INFO
    for name in ("faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.WARNING))

    import faust

    from ._worker import Sessionizer

    sessionizer = Sessionizer(config)

    class _Worker(faust.Worker):
        async def on_stop(self) -> None:
            # A graceful stop first flushes what was folded (records, facts, state) and acks it; the
            # consumer's own stop then commits those offsets, so a restart replays nothing. The
            # worker's children (the app, its consumer) stop only after this returns.
            try:
                await asyncio.wait_for(sessionizer.flush(), FINAL_FLUSH_TIMEOUT_S)
            except Exception as exc:  # the next owner replays from the committed offsets: nothing is lost
                log.warning("final flush failed, the next owner replays its events: %r", exc)
            await super().on_stop()

    worker = _Worker(
        sessionizer.app, loglevel=level, quiet=True, redirect_stdouts=False, override_logging=False, console_port=0
    )
    worker.execute_from_commandline()  # installs signal handlers, owns the loop; returns on SIGTERM
    return 0
