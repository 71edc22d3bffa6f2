"""End-to-end ingest, freshness and memory: the whole pipeline against the same workload sent to MLflow.

tracehouse: a load generator process (the SDK) → Tansu → a sessionizer worker process (faust:
sessions and per-user rollup facts) → the sink (in this process) → chDB. Every process shares the
machine's cores. What counts is what is *stored*: the ``traces`` table is counted every
``sample_every`` seconds; after the load stops the run waits until every trace sent is stored, then
stops the sessionizer (its last session records and facts) and checks that the sessions and the
per-user rollups account for every trace.

- ``rate=0``: the load generator runs as fast as it can; the figure is the stored rate over the run
  after a warm-up (the pipeline's ceiling with everything on this machine).
- ``rate=R``: paced at R traces/s; the run reports whether storage kept up (the backlog at the end),
  the freshness of marker traces (``flush()`` returned → visible in ``traces``, polled every 200 ms)
  and every process's resident set over time.

MLflow: the same load generator through ``@mlflow.trace`` (async logging, default settings) to a real
``mlflow server`` with SQLite, for the same duration; its figure is the traces stored in its database
once the client has flushed and the count has settled, divided by the time that took.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import cpu_seconds, mlflow_server, percentiles, rss_mib, server_pids, thread_cpu_seconds

HERE = Path(__file__).resolve().parent


@dataclass
class _Probe:
    """Samples of one run: stored traces over time, CPU per process at the window's edges, RSS."""

    pids: dict[str, int]
    stored: list[tuple[float, int]] = field(default_factory=list)
    rss: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    cpu_marks: dict[str, dict[str, float]] = field(default_factory=dict)
    sink_threads: dict[str, dict[str, float]] = field(default_factory=dict)

    def mark_cpu(self, name: str) -> None:
        self.cpu_marks[name] = {proc: _safe_cpu(pid) for proc, pid in self.pids.items()}
        self.sink_threads[name] = thread_cpu_seconds(os.getpid())

    def sample_rss(self, t: float) -> None:
        for proc, pid in self.pids.items():
            with contextlib.suppress(OSError):
                self.rss.setdefault(proc, []).append((round(t, 2), round(rss_mib(pid), 1)))


def _safe_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def _stored_at(samples: list[tuple[float, int]], t: float) -> tuple[float, int]:
    """The last sample taken at or before ``t``."""
    best = samples[0]
    for s in samples:
        if s[0] > t:
            break
        best = s
    return best


async def tracehouse_run(workdir: Path, run: str, *, duration_s: float, rate: float, warmup_s: float,
                         partitions: int = 8, marker_every: float = 0.0,
                         sessionizer_args: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    from tracehouse.app.embedded import TansuBroker, ensure_topics
    from tracehouse.processors import Sink, SinkConfig
    from tracehouse.schemas import Topics
    from tracehouse.storage import Store, migrate

    topics = Topics(f"{run}.")
    with TansuBroker(log_path=workdir / f"tansu-{run}.log") as broker:
        await ensure_topics(broker.bootstrap, topics, partitions)
        store = Store(f"chdb://{workdir / f'chdb-{run}'}")
        migrate(store)
        sessionizer = subprocess.Popen(  # noqa: ASYNC220  (started once; returns at once)
            [sys.executable, "-m", "tracehouse.processors.sessions", "--bootstrap", broker.bootstrap,
             "--topic-prefix", topics.prefix, "--app-id", f"sessionizer-{run}", "--partitions", str(partitions),
             "--datadir", str(workdir / f"sessionizer-{run}"), "--loglevel", "WARNING", *sessionizer_args],
            stdout=subprocess.DEVNULL, stderr=(workdir / f"sessionizer-{run}.log").open("wb"),
        )  # fmt: skip
        sink = Sink(SinkConfig.resolve(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, store_uri=store.uri,
                                       group_id=f"sink-{run}"), store)  # fmt: skip
        sink_task = asyncio.create_task(sink.run())
        # The load starts once the sink has joined its group: the warm-up then covers the app's own
        # start, not the consumer group's (which took up to 8 s and left short runs' windows empty).
        deadline = time.monotonic() + 60
        while not sink.stats().assigned and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        try:
            pids = {"broker (Tansu)": broker.pid or 0, "sessionizer": sessionizer.pid, "sink": os.getpid()}
            result = await _drive(broker.bootstrap, topics.prefix, store, sink, sessionizer, pids,
                                  duration_s=duration_s, rate=rate, warmup_s=warmup_s, marker_every=marker_every)
        finally:
            if sessionizer.poll() is None:
                sessionizer.kill()
            await sink.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await sink_task
            store.close()
    result["mode"] = f"paced {rate:.0f}/s" if rate else "max"
    return result


async def _drive(bootstrap: str, prefix: str, store: Any, sink: Any, sessionizer: subprocess.Popen[bytes],
                 pids: dict[str, int], *, duration_s: float, rate: float, warmup_s: float,
                 marker_every: float) -> dict[str, Any]:  # fmt: skip
    gen = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "_loadgen.py"), "--bootstrap", bootstrap, "--topic-prefix", prefix,
        "--duration", str(duration_s), "--rate", str(rate), "--marker-every", str(marker_every),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    t0 = time.monotonic()
    probe = _Probe({"app (load generator + SDK)": gen.pid, **pids})
    pending: dict[str, float] = {}  # marker id -> unix time flush() returned
    fresh_ms: list[float] = []
    summary: dict[str, Any] = {}

    async def read_output() -> None:
        assert gen.stdout is not None
        async for raw in gen.stdout:
            line = raw.decode().strip()
            if line.startswith("M "):
                _, marker, at = line.split()
                pending[marker] = float(at)
            elif line.startswith("{"):
                summary.update(json.loads(line))

    reader = asyncio.create_task(read_output())
    next_count = next_rss = next_probe = 0.0
    marked_start = marked_end = False
    while gen.returncode is None or pending:
        now = time.monotonic() - t0
        if pending and now >= next_probe:
            # What search_traces(user filter) reads: the probe user's traces, by the primary key.
            seen = store.query("SELECT client_request_id FROM traces WHERE experiment_id = '0'"
                               " AND user_id = 'freshness-probe'")  # fmt: skip
            at = time.time()
            for (marker,) in seen:
                if marker in pending:
                    fresh_ms.append((at - pending.pop(marker)) * 1000)
            next_probe = now + 0.2
        if now >= next_count:
            probe.stored.append((now, int(store.query("SELECT count() FROM traces")[0][0])))
            next_count = now + 1.0
        if now >= next_rss:
            probe.sample_rss(now)
            next_rss = now + max(0.5, min(5.0, duration_s / 20))
        if not marked_start and now >= warmup_s:
            probe.mark_cpu("start")
            probe.stored.append((now, int(store.query("SELECT count() FROM traces")[0][0])))
            marked_start = True
        if not marked_end and now >= duration_s - 0.5:  # while the load generator still runs
            probe.mark_cpu("end")
            probe.stored.append((now, int(store.query("SELECT count() FROM traces")[0][0])))
            marked_end = True
        if gen.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(gen.wait(), 0.02)
        else:
            await asyncio.sleep(0.02)
            if time.monotonic() - t0 > duration_s + 120:
                break
    await reader
    if not marked_end:
        probe.mark_cpu("end")
    sent = int(summary["traces"])
    # Drain: every trace sent must be stored.
    deadline = time.monotonic() + 300
    while int(store.query("SELECT count() FROM traces")[0][0]) < sent and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    drained_s = time.monotonic() - t0
    # The sessionizer may still be behind the sink: wait until its records and facts account for every
    # trace sent (it flushes every 500 ms), then stop it (gracefully: a last flush, offsets committed).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        turns, interactions = store.query(
            "SELECT (SELECT sum(turns) FROM sessions FINAL), (SELECT sum(interactions) FROM user_rollups_daily)"
        )[0]
        if int(turns) >= sent and int(interactions) >= sent:
            break
        await asyncio.sleep(0.5)
    sessionizer.send_signal(signal.SIGTERM)
    await asyncio.to_thread(sessionizer.wait, 60)
    await asyncio.sleep(1.5)
    deadline = time.monotonic() + 60
    while not sink.caught_up() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    counts = store.query(
        "SELECT (SELECT count() FROM traces), (SELECT uniqExact(trace_id) FROM traces),"
        " (SELECT count() FROM spans), (SELECT count() FROM sessions FINAL),"
        " (SELECT sum(turns) FROM sessions FINAL), (SELECT sum(interactions) FROM user_rollups_daily)"
    )[0]
    expected_sessions = (sent + 5) // 6 + int(summary["markers"])  # each marker opens a session of its own
    start_t, start_n = _stored_at(probe.stored, warmup_s)
    end_t, end_n = _stored_at(probe.stored, duration_s - 0.5)
    window_stored = end_n - start_n
    cpu = {
        proc: (probe.cpu_marks["end"][proc] - probe.cpu_marks["start"][proc]) / max(window_stored, 1) * 1e6
        for proc in probe.pids
    }
    start_threads, end_threads = probe.sink_threads["start"], probe.sink_threads["end"]
    sink_threads = {
        name: round((end_threads[name] - start_threads.get(name, 0.0)) / max(window_stored, 1) * 1e6, 1)
        for name in end_threads
    }
    return {
        "duration_s": duration_s, "warmup_s": warmup_s, "rate_offered": rate or None,
        "sent": sent, "sent_rate": sent / float(summary["produce_s"]),
        "stored_rate": window_stored / max(end_t - start_t, 1e-9),
        "backlog_at_end": sent * min(1.0, duration_s / float(summary["produce_s"])) - end_n,
        "drained_after_s": drained_s,
        "stored": {"traces": int(counts[0]), "unique_traces": int(counts[1]), "spans": int(counts[2]),
                   "sessions": int(counts[3]), "session_turns": int(counts[4]), "rollup_interactions": int(counts[5]),
                   "expected_sessions": expected_sessions},
        "complete": int(counts[1]) == sent and int(counts[4]) == sent and int(counts[5]) == sent
                    and int(counts[3]) == expected_sessions,
        "sdk": {k: summary.get(k) for k in ("dropped", "failed", "flushed", "max_rss_mb")},
        "sink": {"batches": sink.stats().batches, "writes": sink.stats().writes,
                 "envelopes": sink.stats().envelopes, "lines": sink.stats().lines},
        "cpu_us_per_trace": {**cpu, "total": sum(cpu.values())},
        # the sink process by thread: the event loop (decode, rows, the chDB insert call) and chDB's
        # own pools (merges, which a ClickHouse server would run on its own machine)
        "sink_threads_us_per_trace": {k: v for k, v in sorted(sink_threads.items(), key=lambda kv: -kv[1]) if v},
        "freshness_ms": percentiles(fresh_ms) if fresh_ms else None,
        "rss_mib": probe.rss,
        "stored_samples": probe.stored[::4],
    }  # fmt: skip


def mlflow_run(workdir: Path, run: str, *, duration_s: float, traces: int = 0) -> dict[str, Any]:
    """The same workload through the real ``mlflow`` client to a real ``mlflow server`` (SQLite), for
    ``duration_s`` seconds (or ``traces`` traces, if given)."""
    with mlflow_server(workdir, f"mlflow-{run}") as (url, db, server):
        pids = server_pids(server)
        cpu0 = sum(_safe_cpu(p) for p in pids)
        t0 = time.monotonic()
        gen = subprocess.run(
            [sys.executable, str(HERE / "_loadgen.py"), "--side", "mlflow", "--tracking-uri", url,
             "--duration", str(duration_s), "--traces", str(traces)],
            capture_output=True, text=True, timeout=duration_s + 900, check=True,
        )  # fmt: skip
        summary = json.loads(gen.stdout.strip().splitlines()[-1])
        # The server may still be writing what the client sent last: wait until the count settles.
        stored, settled_at = _count_mlflow(db), time.monotonic()
        while time.monotonic() - settled_at < 3.0:
            time.sleep(0.5)
            now = _count_mlflow(db)
            if now != stored:
                stored, settled_at = now, time.monotonic()
        elapsed = settled_at - t0
        server_cpu = sum(_safe_cpu(p) for p in pids) - cpu0
    sent = int(summary["traces"])
    return {
        "duration_s": duration_s, "sent": sent, "stored": stored, "lost": sent - stored,
        "lost_pct": 100.0 * (sent - stored) / max(sent, 1), "elapsed_s": elapsed,
        "stored_rate": stored / elapsed,
        "cpu_us_per_stored_trace": {"app (load generator + mlflow client)": summary["cpu_s"] / max(stored, 1) * 1e6,
                                    "mlflow server": server_cpu / max(stored, 1) * 1e6},
    }  # fmt: skip


def _count_mlflow(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return int(conn.execute("SELECT count(*) FROM trace_info").fetchone()[0])


def main() -> None:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--warmup", type=float, default=10)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--marker-every", type=float, default=0)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--mlflow", action="store_true", help="run the MLflow side instead")
    args = p.parse_args()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)  # as `tracehouse sink` does
    with tempfile.TemporaryDirectory() as tmp:
        if args.mlflow:
            out = mlflow_run(Path(tmp), "m1", duration_s=args.duration)
        else:
            out = asyncio.run(tracehouse_run(Path(tmp), "t1", duration_s=args.duration, rate=args.rate,
                                             warmup_s=args.warmup, marker_every=args.marker_every,
                                             partitions=args.partitions))  # fmt: skip
    out.pop("stored_samples", None)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
