"""The pipeline as users start it: ``tracehouse up`` (the embedded Tansu broker as a child process; the
sink, the sessionizer and the HTTP API in one process) fed by the load generator through the SDK.

- ``rate=R``: paced at R traces/s. Every ``marker_every`` seconds the app sends one marker trace and
  calls ``flush()``; a poller asks ``up``'s search API for the marker user every ``poll_s`` (50 ms)
  and records when each marker became searchable (freshness, the user's view). The backlog is what
  was sent but not yet stored at the moment the load generator stopped producing, in traces and in
  seconds of traffic.
- ``rate=0``: flat out; the figure is the stored rate after the warm-up.

CPU per stored trace is reported per process (the app, ``up``, the broker) and, inside ``up``, per
thread, so that the next bottleneck is visible. "Backpressure events" are the load generator's waits
for the SDK's buffer to drain and ``up``'s broker generations past the first (each one pauses
ingest). After the run ``up`` is stopped with Ctrl-C, and its store is opened to check that traces,
sessions and per-user rollups account for every trace sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import percentiles, rss_mib, thread_cpu_seconds

HERE = Path(__file__).resolve().parent
PROBE_USER = "freshness-probe"


_LAST_CPU: dict[int, float] = {}


def _cpu(proc: Any) -> float:
    """CPU seconds of ``proc`` so far; once it has exited, the last value read (not 0: a difference
    against an earlier reading would come out negative, as one flat-out run's app figure did)."""
    try:
        t = proc.cpu_times()
        _LAST_CPU[proc.pid] = float(t.user + t.system)
    except Exception:
        pass
    return _LAST_CPU.get(proc.pid, 0.0)


class _Up:
    """A ``tracehouse up`` process and its HTTP API."""

    def __init__(self, workdir: Path, run: str, extra: tuple[str, ...] = ()) -> None:
        import psutil

        from tracehouse.app.embedded import free_port

        self.port, self.kafka_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.datadir = workdir / f"up-{run}"
        self.log = workdir / f"up-{run}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracehouse.app", "up", "--port", str(self.port), "--kafka-port",
             str(self.kafka_port), "--data-dir", str(self.datadir), "--inactivity-gap-ms", "60000", *extra],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.ps = psutil.Process(self.proc.pid)

    def broker(self) -> Any:
        for child in self.ps.children(recursive=True):
            with contextlib.suppress(Exception):
                if "tansu" in child.name():
                    return child
        return None

    def status(self, client: Any) -> dict[str, Any]:
        body: dict[str, Any] = client.get(self.url + "/api/tracehouse/v1/status", timeout=60).json()
        return body

    def stored(self, client: Any) -> int:
        return int((self.status(client).get("store") or {}).get("traces") or 0)

    def wait_ready(self, client: Any, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tracehouse up exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(Exception):
                self.status(client)
                return
            time.sleep(0.3)
        raise RuntimeError("tracehouse up did not answer")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(300)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return -9


class _Markers:
    """Marker traces waiting to become searchable, and a thread asking ``up``'s search API for them
    every ``poll_s`` while any wait."""

    def __init__(self, url: str, poll_s: float) -> None:
        self.url, self.poll_s = url, poll_s
        self.pending: dict[str, float] = {}  # marker id -> unix time flush() returned
        self.fresh_ms: list[float] = []
        self.give_up_at = float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-markers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, wait_s: float = 30.0) -> None:
        """Stop once every marker was seen, or after ``wait_s``."""
        self.give_up_at = time.monotonic() + wait_s
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(wait_s + 30)

    def _run(self) -> None:
        import httpx

        body = {"filter": f"metadata.`mlflow.trace.user` = '{PROBE_USER}'", "max_results": 20,
                "include_spans": False}  # fmt: skip
        with httpx.Client(timeout=30) as client:
            while not (self._stop.is_set() and (not self.pending or time.monotonic() > self.give_up_at)):
                if not self.pending:
                    time.sleep(self.poll_s / 2)
                    continue
                t0 = time.monotonic()
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    traces = client.post(self.url + "/api/tracehouse/v1/traces/search", json=body).json()["traces"]
                    at = time.time()
                    for trace in traces:
                        marker = trace["info"].get("client_request_id")
                        if marker in self.pending:
                            self.fresh_ms.append((at - self.pending.pop(marker)) * 1000)
                time.sleep(max(0.0, self.poll_s - (time.monotonic() - t0)))


def up_run(workdir: Path, run: str, *, duration_s: float, rate: float, warmup_s: float,
           marker_every: float = 0.5, poll_s: float = 0.05) -> dict[str, Any]:  # fmt: skip
    import httpx
    import psutil

    up = _Up(workdir, run)
    markers = _Markers(up.url, poll_s)
    summary: dict[str, Any] = {}
    stored: list[tuple[float, int]] = []
    rss: dict[str, list[tuple[float, float]]] = {}
    try:
        with httpx.Client() as client:
            up.wait_ready(client)
            gen = subprocess.Popen(
                [sys.executable, str(HERE / "_loadgen.py"), "--bootstrap", f"127.0.0.1:{up.kafka_port}",
                 "--duration", str(duration_s), "--rate", str(rate),
                 "--marker-every", str(marker_every if rate else 0)],
                stdout=subprocess.PIPE, stderr=(workdir / f"loadgen-{run}.log").open("wb"), text=True,
            )  # fmt: skip
            t0 = time.monotonic()
            procs = {"app (load generator + SDK)": psutil.Process(gen.pid), "up (sink, sessionizer, HTTP)": up.ps}
            produced_at: list[float] = []

            def read_output() -> None:
                assert gen.stdout is not None
                for line in gen.stdout:
                    if line.startswith("M "):
                        _, marker, at = line.split()
                        markers.pending[marker] = float(at)
                    elif line.startswith("E "):
                        produced_at.append(time.monotonic() - t0)
                        summary["produced"] = int(line.split()[1])
                    elif line.startswith("{"):
                        summary.update(json.loads(line))

            reader = threading.Thread(target=read_output, daemon=True)
            reader.start()
            markers.start()
            marks: dict[str, dict[str, Any]] = {}

            def mark(name: str) -> None:
                broker = up.broker()
                now = {**procs, **({"broker (Tansu)": broker} if broker else {})}
                marks[name] = {"t": time.monotonic() - t0, "stored": up.stored(client),
                               "cpu": {k: _cpu(p) for k, p in now.items()},
                               "threads": thread_cpu_seconds(up.proc.pid)}  # fmt: skip

            next_sample = 0.0
            while gen.poll() is None and not produced_at:
                now = time.monotonic() - t0
                if "start" not in marks and now >= warmup_s:
                    mark("start")
                if now >= next_sample:
                    with contextlib.suppress(Exception):
                        stored.append((round(now, 1), up.stored(client)))
                    broker = up.broker()
                    for name, proc in {**procs, **({"broker (Tansu)": broker} if broker else {})}.items():
                        with contextlib.suppress(Exception):
                            rss.setdefault(name, []).append((round(now, 1), round(rss_mib(proc.pid), 1)))
                    next_sample = now + 5.0  # status reads Kafka and the store: not too often
                time.sleep(0.05)
            mark("end")  # the moment the app stopped producing (or as close as the poll)
            gen.wait(600)
            reader.join(30)
            sent = int(summary.get("traces", 0))
            backlog = sent - marks["end"]["stored"]
            deadline = time.monotonic() + 600
            while up.stored(client) < sent and time.monotonic() < deadline:
                time.sleep(0.2)
            drained_after_s = time.monotonic() - t0 - marks["end"]["t"]
            markers.finish()
            status = up.status(client)
    finally:
        markers.finish(0)
        exit_code = up.stop()
    counts = _stored_counts(up.datadir)
    start, end = marks.get("start") or marks["end"], marks["end"]
    window = max(end["stored"] - start["stored"], 1)
    seconds = max(end["t"] - start["t"], 1e-9)
    cpu = {k: (end["cpu"][k] - start["cpu"].get(k, end["cpu"][k])) / window * 1e6 for k in end["cpu"]}
    threads = {k: round((v - start["threads"].get(k, 0.0)) / window * 1e6, 1) for k, v in end["threads"].items()}
    outside_app = sum(v for k, v in cpu.items() if not k.startswith("app"))
    expected_sessions = (sent + 5) // 6 + int(summary.get("markers", 0))
    broker = status.get("broker") or {}
    return {
        "mode": f"paced {rate:.0f}/s" if rate else "max", "duration_s": duration_s, "warmup_s": warmup_s,
        "rate_offered": rate or None, "sent": sent, "sent_rate": sent / max(float(summary.get("produce_s", 1)), 1e-9),
        "stored_rate": window / seconds, "backlog_at_end": backlog,
        "backlog_s": round(backlog / rate, 2) if rate else None, "drained_after_s": round(drained_after_s, 1),
        "freshness_ms": percentiles(markers.fresh_ms) if markers.fresh_ms else None,
        "markers_unseen": len(markers.pending),
        "poll_s": poll_s,
        "stored": counts,
        "complete": counts["unique_traces"] == sent and counts["session_turns"] == sent
                    and counts["rollup_interactions"] == sent and counts["sessions"] == expected_sessions,
        "expected_sessions": expected_sessions,
        "sdk": {k: summary.get(k) for k in ("dropped", "failed", "flushed", "max_rss_mb", "waits")},
        "backpressure_events": int(summary.get("waits") or 0) + int(broker.get("rollovers") or 0),
        "broker_generations": int(broker.get("rollovers") or 0) + 1,
        "cpu_us_per_trace": {**{k: round(v, 1) for k, v in cpu.items()}, "outside_app": round(outside_app, 1)},
        "up_threads_us_per_trace": {k: v for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v >= 1},
        "rss_mib": rss, "stored_samples": stored[::2], "up_exit_code": exit_code,
    }  # fmt: skip


def _stored_counts(datadir: Path) -> dict[str, int]:
    from tracehouse.storage import Store

    with Store(f"chdb://{datadir / 'chdb'}") as store:
        row = store.query(
            "SELECT (SELECT count() FROM traces), (SELECT uniqExact(trace_id) FROM traces),"
            " (SELECT count() FROM sessions FINAL), (SELECT sum(turns) FROM sessions FINAL),"
            " (SELECT sum(interactions) FROM user_rollups_daily)"
        )[0]
    keys = ("traces", "unique_traces", "sessions", "session_turns", "rollup_interactions")
    return {k: int(v or 0) for k, v in zip(keys, row, strict=True)}


def main() -> None:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=120)
    p.add_argument("--warmup", type=float, default=20)
    p.add_argument("--rate", type=float, default=5000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = up_run(Path(tmp), "u1", duration_s=args.duration, rate=args.rate, warmup_s=args.warmup)
    for key in ("rss_mib", "stored_samples"):
        out.pop(key, None)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
