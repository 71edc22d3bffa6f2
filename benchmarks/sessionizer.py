"""Sessionizer throughput: one worker process folding pre-published traces into sessions and per-user
rollup facts, on the embedded Tansu broker.

    python benchmarks/sessionizer.py [--traces 200000] [--partitions 8] [--repeat 3]

Each round publishes the traces once (3 spans and ~1.5 KB each, 2,000 users, 6 turns a session,
1 % duplicates, SDK-sized envelopes), then runs a fresh sessionizer (new app id: empty state) over
them twice, side by side: with rollups (sessions + ``user_trace`` facts, the default) and without
(sessions only). The figure is traces per second from the first envelope folded to the flush that
acked the last one: decoding, folding, changelog writes, session records and facts included; the
worker's start-up and group join excluded. CPU is the process's user+system time over that window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from tracehouse.app.embedded import TansuBroker, ensure_topics, free_port
from tracehouse.processors.sessions import Sessionizer, SessionizerConfig, run_sessionizer
from tracehouse.schemas import Topics, encode_envelope, envelope_headers

PAD = "lorem ipsum dolor sit amet " * 12


def make_lines(n: int, users: int = 2000, turns: int = 6, seed: int = 1) -> list[tuple[str, bytes]]:
    """``(partition key, line)`` of ``n`` traces plus 1 % duplicates."""
    rng = random.Random(seed)
    base = 1_795_000_000_000
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        session = f"session-{i // turns}"
        user = f"user-{rng.randrange(users)}"
        ts = base + i * 20
        ns = ts * 1_000_000
        root = f"{i:013x}aaa"
        line = orjson.dumps({
            "type": "trace", "trace_id": f"tr-{i:032x}", "timestamp_ms": ts, "execution_time_ms": rng.randint(50, 3000),
            "state": "ERROR" if rng.random() < 0.05 else "OK", "request_preview": f"question {i}",
            "response_preview": PAD[:200],
            "metadata": {"mlflow.trace.user": user, "mlflow.trace.session": session,
                         "mlflow.trace.tokenUsage": '{"input_tokens": 120, "output_tokens": 40, "total_tokens": 160}'},
            "spans": [
                {"span_id": root, "name": "chat", "start_time_ns": ns, "end_time_ns": ns + 30_000_000,
                 "attributes": {"mlflow.spanInputs": {"q": PAD}}},
                {"span_id": f"{i:013x}bbb", "parent_span_id": root, "name": "retrieve", "start_time_ns": ns + 1,
                 "end_time_ns": ns + 9_000_000, "attributes": {"mlflow.spanOutputs": [PAD[:200]]}},
                {"span_id": f"{i:013x}ccc", "parent_span_id": root, "name": "llm", "start_time_ns": ns + 9_000_001,
                 "end_time_ns": ns + 29_000_000, "attributes": {"mlflow.spanOutputs": PAD}},
            ],
        })  # fmt: skip
        out.append((session, line))
        if rng.random() < 0.01:
            out.append((session, line))
    return out


async def publish(bootstrap: str, topic: str, lines: list[tuple[str, bytes]], partitions: int, per: int) -> int:
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import murmur2

    by_partition: dict[int, list[bytes]] = {}
    for key, line in lines:
        by_partition.setdefault((murmur2(key.encode()) & 0x7FFFFFFF) % partitions, []).append(line)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                max_request_size=16 << 20)  # fmt: skip
    await producer.start()
    sent = 0
    try:
        futures = []
        for p, plines in by_partition.items():
            for i in range(0, len(plines), per):
                chunk = plines[i : i + per]
                futures.append(await producer.send(topic, encode_envelope(chunk), partition=p,
                                                   headers=envelope_headers(len(chunk))))  # fmt: skip
                sent += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def one_run(bootstrap: str, topics: Topics, partitions: int, lines: int, rollups: bool, workdir: Path
                  ) -> dict[str, Any]:  # fmt: skip
    config = SessionizerConfig.resolve(
        bootstrap=bootstrap, topic_prefix=topics.prefix, app_id=f"bench-{uuid.uuid4().hex[:8]}",
        partitions=partitions, rollup_partitions=partitions, emit_rollups=rollups, flush_interval_ms=500,
        datadir=str(workdir / uuid.uuid4().hex[:6]), env={},
    )  # fmt: skip
    worker = Sessionizer(config)
    stop = asyncio.Event()
    task = asyncio.create_task(run_sessionizer(config, stop, sessionizer=worker))
    stats = worker.stats
    deadline = time.monotonic() + 600
    cpu0: float | None = None
    try:
        while stats.traces < lines:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise TimeoutError(f"folded {stats.traces} of {lines} traces in 600 s")
            if cpu0 is None and stats.first_envelope_at is not None:
                cpu0 = _cpu()
            await asyncio.sleep(0.01)
        await worker.flush()  # waits for the timer's flush in progress, then persists and acks the rest
        done = time.perf_counter()
        cpu1 = _cpu()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert stats.first_envelope_at is not None
    wall = done - stats.first_envelope_at
    return {
        "rollups": rollups, "traces": lines, "wall_s": round(wall, 2), "traces_per_s": round(lines / wall),
        "cpu_us_per_trace": round((cpu1 - (cpu0 or cpu1)) / lines * 1e6, 1), "new_traces": stats.new_traces,
        "records_emitted": stats.records_emitted, "facts_emitted": stats.facts_emitted, "flushes": stats.flushes,
    }  # fmt: skip


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    lines = make_lines(args.traces)
    results = []
    with tempfile.TemporaryDirectory() as tmp, TansuBroker(port=free_port(), log_path=Path(tmp) / "tansu.log") as b:
        for r in range(args.repeat):
            topics = Topics(prefix=f"bench{r}{uuid.uuid4().hex[:6]}.")
            await ensure_topics(b.bootstrap, topics, args.partitions)
            envelopes = await publish(b.bootstrap, topics.traces, lines, args.partitions, args.per_envelope)
            for rollups in (True, False):
                res = await one_run(b.bootstrap, topics, args.partitions, len(lines), rollups, Path(tmp))
                res.update(round=r + 1, envelopes=envelopes)
                results.append(res)
                print(json.dumps(res), flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--per-envelope", type=int, default=200, help="traces per Kafka message (the SDK batches)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print(f"# python {sys.version.split()[0]} on {platform.platform()}", flush=True)
    results = asyncio.run(main_async(args))
    for rollups in (True, False):
        rates = sorted(r["traces_per_s"] for r in results if r["rollups"] == rollups)
        label = "sessions + rollups" if rollups else "sessions only"
        print(f"{label}: median {rates[len(rates) // 2]} traces/s (runs: {rates})")


if __name__ == "__main__":
    main()
