"""Memory over time: the embedded broker's growth per trace (zstd against none, side by side), and the
long soak through ``tracehouse up`` (every process's resident-set slope after warm-up).

- ``broker_growth``: the pipeline of benchmarks/_e2e.py (load generator → Tansu → sessionizer → sink →
  chDB) paced at ``rate`` traces/s for ``duration_s``, once per codec, interleaved; the figure is the
  broker's resident-set growth from its idle size (topics created) to its peak, divided by the traces
  stored. The workload is the load generator's 3-span trace of about 2.4 KB.
- ``soak_up``: ``tracehouse up`` (one process: sink, sessionizer, HTTP; its broker a child process)
  and a load generator at ``rate`` traces/s for ``duration_s``; every process's resident set is
  sampled, and after ``warmup_s`` its least-squares slope (MiB per hour) and its growth (the last
  quarter's peak against the first sample) are reported. The broker's memory is a sawtooth by design
  (a new generation at ``--broker-memory-limit-mb``): its generations and peak are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _slope_mib_per_h(samples: list[tuple[float, float]]) -> float | None:
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in samples) / var * 3600


def broker_growth(workdir: Path, *, duration_s: float, rate: float, codecs: tuple[str, ...] = ("zstd", "none"),
                  rounds: int = 1) -> dict[str, Any]:  # fmt: skip
    import asyncio

    import _e2e

    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in codecs}
    for r in range(rounds):
        for codec in codecs:  # interleaved: A B A B
            os.environ["TRACEHOUSE_KAFKA_COMPRESSION"] = codec
            try:
                run = asyncio.run(_e2e.tracehouse_run(workdir, f"mem-{codec}-{r}", duration_s=duration_s, rate=rate,
                                                      warmup_s=0))  # fmt: skip
            finally:
                os.environ.pop("TRACEHOUSE_KAFKA_COMPRESSION", None)
            rss = run["rss_mib"]["broker (Tansu)"]
            idle, peak = rss[0][1], max(v for _, v in rss)
            stored = run["stored"]["unique_traces"]
            runs[codec].append({
                "traces": stored, "idle_mib": idle, "peak_mib": peak,
                "kib_per_trace": round((peak - idle) * 1024 / max(stored, 1), 3), "complete": run["complete"],
                "stored_rate": round(run["stored_rate"], 1),
            })  # fmt: skip
    out: dict[str, Any] = {"duration_s": duration_s, "rate": rate, "runs": runs}
    if "zstd" in runs and "none" in runs:
        z = min(x["kib_per_trace"] for x in runs["zstd"])
        n = min(x["kib_per_trace"] for x in runs["none"])
        out["ratio_none_over_zstd"] = round(n / z, 1) if z else None
    out["target_kib_per_trace"] = 1.0
    out["met"] = all(x["kib_per_trace"] <= 1.0 for x in runs.get("zstd", []))
    return out


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/api/tracehouse/v1/status", timeout=60) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def soak_up(workdir: Path, *, duration_s: float, rate: float, warmup_s: float, sample_every_s: float,
            memory_limit_mb: float = 1024.0) -> dict[str, Any]:  # fmt: skip
    import psutil

    sys.path.insert(0, str(HERE.parent / "tests"))
    from tracehouse.app.embedded import free_port

    port, kafka_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    up = subprocess.Popen(
        [sys.executable, "-m", "tracehouse.app", "up", "--port", str(port), "--kafka-port", str(kafka_port),
         "--data-dir", str(workdir / "up"), "--broker-memory-limit-mb", str(memory_limit_mb),
         "--inactivity-gap-ms", "60000"],
        stdout=(workdir / "up.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    samples: dict[str, list[tuple[float, float]]] = {"up (sink, sessionizer, HTTP)": [], "broker (Tansu)": [],
                                                     "app (load generator + SDK)": []}  # fmt: skip
    status: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status = _status(url)
                break
            except OSError:
                time.sleep(0.5)
        gen = subprocess.Popen(
            [sys.executable, str(HERE / "_loadgen.py"), "--bootstrap", f"127.0.0.1:{kafka_port}", "--duration",
             str(duration_s), "--rate", str(rate)],
            stdout=subprocess.PIPE, stderr=(workdir / "loadgen.log").open("wb"),
        )  # fmt: skip
        t0 = time.monotonic()
        while gen.poll() is None:
            t = time.monotonic() - t0
            procs = {"up (sink, sessionizer, HTTP)": psutil.Process(up.pid), "app (load generator + SDK)":
                     psutil.Process(gen.pid)}  # fmt: skip
            brokers = [c for c in psutil.Process(up.pid).children() if "tansu" in c.name()]
            if brokers:
                procs["broker (Tansu)"] = brokers[0]
            for name, proc in procs.items():
                with contextlib.suppress(psutil.Error):
                    samples[name].append((round(t, 1), round(proc.memory_info().rss / 2**20, 1)))
            time.sleep(sample_every_s)
        summary = json.loads((gen.stdout.read() if gen.stdout else b"{}").decode().strip().splitlines()[-1])
        sent = int(summary.get("traces", 0))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = _status(url)
            if (status.get("store") or {}).get("traces", 0) >= sent:
                break
            time.sleep(1)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(300)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
    processes: dict[str, Any] = {}
    for name, series in samples.items():
        after = [(t, v) for t, v in series if t >= warmup_s]
        if not after:
            continue
        tail = after[-max(1, len(after) // 4):]
        processes[name] = {
            "after_warmup_mib": after[0][1], "last_quarter_max_mib": max(v for _, v in tail),
            "peak_mib": max(v for _, v in series), "slope_mib_per_h": _slope_mib_per_h(after),
            "growth_pct": round(100 * (max(v for _, v in tail) / after[0][1] - 1), 1),
        }  # fmt: skip
    broker = status.get("broker") or {}
    others = [p for n, p in processes.items() if not n.startswith("broker")]
    return {
        "duration_s": duration_s, "rate": rate, "warmup_s": warmup_s, "sent": sent,
        "stored": (status.get("store") or {}).get("traces"), "broker_generations": int(broker.get("rollovers", 0)) + 1,
        "broker_memory_limit_mb": memory_limit_mb, "processes": processes,
        "others_within_10pct": all(p["growth_pct"] <= 10 for p in others), "samples": samples,
        "up_exit_code": up.returncode,
    }  # fmt: skip
