"""Command line: ``sink`` runs the sink until SIGTERM/SIGINT (draining on stop); ``dlq`` prints the
dead-letter topic as JSON lines.

Must not read configuration at import time; must not start anything before ``main`` is called.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ._config import SinkConfig
from ._dlq import read_dlq
from ._sink import Sink

log = logging.getLogger("tracehouse.sink")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tracehouse.processors", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--bootstrap", help="Kafka bootstrap servers (env TRACEHOUSE_KAFKA_BOOTSTRAP)")
        sp.add_argument("--topic-prefix", help="topic prefix (env TRACEHOUSE_TOPIC_PREFIX)")
        sp.add_argument("--log-level", default="INFO", help="logging level (default INFO)")

    s = sub.add_parser("sink", help="consume trace envelopes into ClickHouse")
    common(s)
    s.add_argument("--store", help="chdb:///path or clickhouse://... (env TRACEHOUSE_STORE_URI)")
    s.add_argument("--group", help="consumer group (default tracehouse-sink)")
    s.add_argument("--dlq-topic", help="dead-letter topic (default <prefix>dlq.v1)")
    s.add_argument("--max-batch-rows", type=int)
    s.add_argument("--max-batch-bytes", type=int)
    s.add_argument("--max-batch-age-ms", type=int)
    s.add_argument("--max-poll-records", type=int)
    s.add_argument("--poll-timeout-ms", type=int)
    s.add_argument("--session-timeout-ms", type=int, help="consumer group session timeout")
    s.add_argument("--heartbeat-interval-ms", type=int)
    s.add_argument("--drain-timeout", type=float, help="seconds a stop may spend flushing")
    s.add_argument("--migrate", action="store_true", help="apply pending ClickHouse migrations before consuming")

    d = sub.add_parser("dlq", help="print dead letters as JSON lines")
    common(d)
    d.add_argument("--limit", type=int)
    d.add_argument("--timeout", type=float, default=10.0)
    return p


def _sink_config(args: argparse.Namespace) -> SinkConfig:
    overrides: dict[str, Any] = {}
    for arg, name in (
        ("group", "group_id"), ("dlq_topic", "dlq_topic"), ("max_batch_rows", "max_batch_rows"),
        ("max_batch_bytes", "max_batch_bytes"), ("max_batch_age_ms", "max_batch_age_ms"),
        ("max_poll_records", "max_poll_records"), ("drain_timeout", "drain_timeout_s"),
        ("poll_timeout_ms", "poll_timeout_ms"), ("session_timeout_ms", "session_timeout_ms"),
        ("heartbeat_interval_ms", "heartbeat_interval_ms"),
    ):  # fmt: skip
        value = getattr(args, arg)
        if value is not None:
            overrides[name] = value
    return SinkConfig.resolve(
        bootstrap=args.bootstrap, topic_prefix=args.topic_prefix, store_uri=args.store, **overrides
    )


async def _run_sink(config: SinkConfig, migrate_first: bool) -> None:
    from tracehouse.storage import Store, migrate

    store = await asyncio.to_thread(Store, config.store_uri)
    try:
        if migrate_first:
            applied = await asyncio.to_thread(migrate, store)
            if applied:
                log.info("applied migrations %s", [m.version for m in applied])
        sink = Sink(config, store)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sink.request_stop)
        await sink.run()
    finally:
        await asyncio.to_thread(store.close)


async def _print_dlq(args: argparse.Namespace) -> None:
    config = SinkConfig.resolve(bootstrap=args.bootstrap, topic_prefix=args.topic_prefix)
    letters = await read_dlq(config.bootstrap, config.dead_letter_topic, limit=args.limit, timeout_s=args.timeout)
    for letter in letters:
        try:
            value: str = letter.value.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            value, encoding = base64.b64encode(letter.value).decode(), "base64"
        sys.stdout.write(
            json.dumps(
                {
                    "reason": letter.reason,
                    "origin": {
                        "topic": letter.origin_topic,
                        "partition": letter.origin_partition,
                        "offset": letter.origin_offset,
                        "line": letter.origin_line,
                    },
                    "time_ms": letter.time_ms,
                    "truncated_from": letter.truncated_from,
                    "encoding": encoding,
                    "value": value,
                }
            )
            + "\n"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "sink":
        # The sink keeps batches of thousands of decoded events alive; the default gen-0 threshold
        # (700 allocations) makes the collector rescan them constantly (measured: ~15 % of throughput).
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        asyncio.run(_run_sink(_sink_config(args), args.migrate))
    else:
        asyncio.run(_print_dlq(args))
    return 0
