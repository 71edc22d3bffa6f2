"""Throughput benchmark: Tansu broker, pre-produced envelopes, one faust worker subprocess per run.

python run_bench.py --sizes 1,100,500 --modes decode,table,dict --runs 3
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, "/tmp/faustspike")
from common import create_topics, envelopes, produce, workload  # noqa: E402

from tracehouse.embedded import TansuBroker  # noqa: E402

HERE = Path("/tmp/faustspike")
PY = "/work/main/.venv/bin/python"
APP = "app.py"


def run_worker(bootstrap, topic, rollups, mode, expect, flush_ms=200, timeout=300, extra_args=()):
    app_id = f"spike-{mode}-{uuid.uuid4().hex[:6]}"
    result = HERE / "results" / f"{app_id}.json"
    result.parent.mkdir(exist_ok=True)
    log = open(HERE / "results" / f"{app_id}.log", "wb")
    cmd = [PY, str(HERE / APP), "--bootstrap", bootstrap, "--app-id", app_id, "--traces-topic", topic,
           "--rollups-topic", rollups, "--mode", mode, "--expect", str(expect), "--result", str(result),
           "--flush-ms", str(flush_ms), *extra_args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE))
    try:
        while not result.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}, see {log.name}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"timeout, see {log.name}")
            time.sleep(0.1)
        res = json.loads(result.read_text())
        res["startup_to_done_s"] = time.perf_counter() - t0
        return res
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,100,500")
    ap.add_argument("--modes", default="decode,table,dict")
    ap.add_argument("--flush-ms", default="200")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--traces-n1", type=int, default=20_000)
    ap.add_argument("--out", default=str(HERE / "results" / "bench.jsonl"))
    ap.add_argument("--app", default="app.py")
    a = ap.parse_args()
    global APP
    APP = a.app
    broker = TansuBroker(log_path=HERE / "tansu.log").start()
    bootstrap = broker.bootstrap
    print("broker", bootstrap, flush=True)
    out = open(a.out, "a")
    try:
        for n in map(int, a.sizes.split(",")):
            total = a.traces_n1 if n == 1 else a.traces
            topic, rollups = f"spike.n{n}.traces.v1", f"spike.n{n}.user-rollups.v1"
            asyncio.run(create_topics(bootstrap, [topic, rollups], 8))
            items = workload(total)
            envs = envelopes(items, 8, n)
            del items
            sec = asyncio.run(produce(bootstrap, topic, envs))
            print(f"N={n}: produced {len(envs)} envelopes / {total} traces in {sec:.1f}s", flush=True)
            for mode in a.modes.split(","):
                for fms in (map(int, a.flush_ms.split(",")) if mode == "dict" else [200] if mode.startswith("dict") else [0]):
                    rs = []
                    for _ in range(a.runs):
                        r = run_worker(bootstrap, topic, rollups, mode, total, flush_ms=fms or 200)
                        r.update(n=n, flush_ms=fms)
                        out.write(json.dumps(r) + "\n")
                        out.flush()
                        rs.append(r)
                    med = statistics.median(r["traces_per_s"] for r in rs)
                    extra = ""
                    if rs[0].get("set_us"):
                        extra = f" set_us={statistics.median(r['set_us'] for r in rs):.1f}"
                    if mode.startswith("dict"):
                        extra += f" flush_us/key={statistics.median(r['flush_s']/max(1,r['flushed_keys'])*1e6 for r in rs):.1f}"
                    print(f"N={n:4d} mode={mode:12s} K={fms:5d}: median {med:8.0f} traces/s  runs="
                          f"{[round(r['traces_per_s']) for r in rs]} cpu/wall={statistics.median(r['cpu_s']/r['wall_s'] for r in rs):.2f}"
                          f" sessions/env={rs[0].get('sets', 0)/max(1, rs[0]['envs']):.1f} rollup_msgs={rs[0]['rollup_msgs']}{extra}",
                          flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
