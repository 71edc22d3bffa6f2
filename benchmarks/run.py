"""The benchmark suite: tracehouse against a real MLflow server, on the embedded defaults, one command.

    python benchmarks/run.py [--quick] [--out DIR] [--only sdk,ingest,soak,queries]

(``scripts/bench`` does the same after setting up ``.venv``.) Stages, each against its peer where
there is one, measured in the same run and interleaved (A B A B):

- ``sdk``: the time a traced call adds in the app thread, tracehouse SDK vs ``@mlflow.trace``
  (benchmarks/sdk_vs_mlflow.py);
- ``ingest``: the stored rate of the whole pipeline (load generator process → Kafka → sessionizer →
  sink → ClickHouse) vs the same workload through the MLflow client to ``mlflow server``
  (benchmarks/_e2e.py);
- ``soak``: the pipeline paced at 5,000 traces/s: freshness of marker traces and every process's
  resident set over time (benchmarks/_e2e.py);
- ``queries``: search, users table and session timelines over HTTP at 10 M traces, search vs MLflow
  (benchmarks/_queries.py);
- ``memory``: the embedded broker's growth per trace at 1,000 traces/s for 2 minutes, zstd against no
  compression in the same run (benchmarks/_memory.py);
- ``up``: the pipeline as users start it, through ``tracehouse up``: paced at 1,000 and at 5,000
  traces/s with freshness markers polled every 50 ms through the search API, then flat out; CPU per
  stored trace per process and per thread of ``up`` (benchmarks/_through_up.py);
- ``soak-up`` (``--soak``, 30 minutes, not in the default set): ``tracehouse up`` at 1,000 traces/s,
  every process's resident-set slope after warm-up (benchmarks/_memory.py).

Writes ``report.json`` (everything measured) and ``report.md`` (the headline table with targets, then
the details) into ``--out`` (default ``benchmarks/reports/<UTC time>``). ``--quick`` runs every stage
small (well under 2 minutes): a smoke test that the suite works, not a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, spread, versions  # noqa: E402

STAGES = ("sdk", "ingest", "up", "soak", "queries", "memory")
#: Long stages, run only when asked (``--soak``, or ``--only``).
LONG_STAGES = ("soak-up",)


@dataclass(frozen=True)
class Plan:
    """How big each stage runs."""

    sdk_calls: int
    sdk_rounds: int
    ingest_rounds: int
    ingest_s: float
    ingest_warmup_s: float
    mlflow_ingest_s: float
    mlflow_ingest_traces: int
    soak_s: float
    soak_warmup_s: float
    soak_rate: float
    query_traces: int
    query_mlflow_traces: int
    query_repeats: int
    query_settle_s: float  # MLflow's server finishes starting its job runner before the queries
    up_rates: tuple[float, ...] = (1000.0, 5000.0)
    up_paced_s: tuple[float, ...] = (120.0, 600.0)  # per rate
    up_paced_warmup_s: float = 30.0
    up_flat_s: float = 60.0
    up_flat_warmup_s: float = 15.0
    up_rounds: int = 1
    memory_s: float = 120.0
    memory_rate: float = 1000.0
    soak_up_s: float = 1800.0
    soak_up_rate: float = 1000.0
    soak_up_warmup_s: float = 300.0
    soak_up_sample_s: float = 10.0


FULL = Plan(sdk_calls=100_000, sdk_rounds=2, ingest_rounds=2, ingest_s=60, ingest_warmup_s=10, mlflow_ingest_s=60,
            mlflow_ingest_traces=0, soak_s=360, soak_warmup_s=180, soak_rate=5000, query_traces=10_000_000,
            query_mlflow_traces=100_000, query_repeats=50, query_settle_s=10)  # fmt: skip
QUICK = Plan(sdk_calls=1_000, sdk_rounds=1, ingest_rounds=1, ingest_s=5, ingest_warmup_s=2, mlflow_ingest_s=3,
             mlflow_ingest_traces=20, soak_s=5, soak_warmup_s=2, soak_rate=1000, query_traces=110_000,
             query_mlflow_traces=1_000, query_repeats=3, query_settle_s=1, up_rates=(300.0,), up_paced_s=(6.0,),
             up_paced_warmup_s=2, up_flat_s=5, up_flat_warmup_s=2, memory_s=5, memory_rate=300,
             soak_up_s=20, soak_up_rate=200, soak_up_warmup_s=5, soak_up_sample_s=1)  # fmt: skip


# ---------------------------------------------------------------------------------------------- stages


def stage_sdk(plan: Plan, workdir: Path) -> dict[str, Any]:
    import sdk_vs_mlflow

    runs: dict[str, list[dict[str, float]]] = {"tracehouse": [], "mlflow": []}
    with sdk_vs_mlflow._backends() as targets:
        for _ in range(plan.sdk_rounds):
            for side in ("tracehouse", "mlflow"):
                runs[side].append(sdk_vs_mlflow._run(side, plan.sdk_calls, targets[side]))
    out: dict[str, Any] = {"calls": plan.sdk_calls, "runs": runs}
    for side, results in runs.items():
        out[side] = {"added_p50_us": spread([r["overhead_p50_us"] for r in results]),
                     "added_p99_us": spread([r["overhead_p99_us"] for r in results])}  # fmt: skip
        if all("amortized_us" in r for r in results):
            out[side]["amortized_us"] = spread([r["amortized_us"] for r in results])
    out["ratio"] = out["mlflow"]["added_p50_us"]["median"] / max(out["tracehouse"]["added_p50_us"]["median"], 1e-9)
    if "amortized_us" in out["tracehouse"] and "amortized_us" in out["mlflow"]:
        out["ratio_amortized"] = (out["mlflow"]["amortized_us"]["median"]
                                  / max(out["tracehouse"]["amortized_us"]["median"], 1e-9))  # fmt: skip
    return out


def stage_ingest(plan: Plan, workdir: Path) -> dict[str, Any]:
    import _e2e

    tracehouse: list[dict[str, Any]] = []
    mlflow: list[dict[str, Any]] = []
    for r in range(plan.ingest_rounds):  # A B A B
        tracehouse.append(asyncio.run(_e2e.tracehouse_run(
            workdir, f"ingest{r}", duration_s=plan.ingest_s, rate=0, warmup_s=plan.ingest_warmup_s)))  # fmt: skip
        _progress(f"ingest round {r + 1}: tracehouse {tracehouse[-1]['stored_rate']:,.0f} traces/s stored")
        mlflow.append(_e2e.mlflow_run(workdir, f"ingest{r}", duration_s=plan.mlflow_ingest_s,
                                      traces=plan.mlflow_ingest_traces))
        _progress(f"ingest round {r + 1}: mlflow {mlflow[-1]['stored_rate']:,.1f} traces/s stored "
                  f"({mlflow[-1]['lost_pct']:.0f} % of sent lost)")  # fmt: skip
    for run in tracehouse:
        run.pop("rss_mib", None)
    th_rate = spread([r["stored_rate"] for r in tracehouse])
    ml_rate = spread([r["stored_rate"] for r in mlflow])
    procs = tracehouse[0]["cpu_us_per_trace"]
    cpu = {k: statistics.median(r["cpu_us_per_trace"][k] for r in tracehouse) for k in procs}
    return {"tracehouse": {"stored_rate": th_rate, "cpu_us_per_trace": cpu, "runs": tracehouse},
            "mlflow": {"stored_rate": ml_rate, "runs": mlflow},
            "ratio": th_rate["median"] / max(ml_rate["median"], 1e-9)}  # fmt: skip


def stage_up(plan: Plan, workdir: Path) -> dict[str, Any]:
    import _through_up as _up

    paced: dict[str, list[dict[str, Any]]] = {}
    flat: list[dict[str, Any]] = []
    for r in range(plan.up_rounds):
        for rate, seconds in zip(plan.up_rates, plan.up_paced_s, strict=True):
            run = _up.up_run(workdir, f"paced{rate:.0f}-{r}", duration_s=seconds, rate=rate,
                             warmup_s=plan.up_paced_warmup_s)  # fmt: skip
            paced.setdefault(f"{rate:.0f}", []).append(run)
            fresh = run["freshness_ms"] or {}
            _progress(f"up paced {rate:,.0f}/s for {seconds:.0f} s: stored {run['stored_rate']:,.0f}/s, backlog "
                      f"{run['backlog_at_end']:,} at the end, freshness p50 {fresh.get('p50', 0):,.0f} ms p95 "
                      f"{fresh.get('p95', 0):,.0f} ms, complete {run['complete']}")  # fmt: skip
        flat.append(_up.up_run(workdir, f"flat-{r}", duration_s=plan.up_flat_s, rate=0,
                               warmup_s=plan.up_flat_warmup_s))  # fmt: skip
        _progress(f"up flat out: stored {flat[-1]['stored_rate']:,.0f}/s, complete {flat[-1]['complete']}")
    return {"paced": paced, "flat": {"stored_rate": spread([r["stored_rate"] for r in flat]), "runs": flat}}


def stage_soak(plan: Plan, workdir: Path) -> dict[str, Any]:
    import _e2e

    # Sessions close after a 60 s gap and are forgotten 60 s later, so the sessionizer's state reaches
    # its steady size within the warm-up (with the defaults, 30 min and kept forever, it would grow
    # for the whole run by design).
    gap = ("--inactivity-gap-ms", "60000", "--state-retention-ms", "120000")
    run = asyncio.run(_e2e.tracehouse_run(workdir, "soak", duration_s=plan.soak_s, rate=plan.soak_rate,
                                          warmup_s=plan.soak_warmup_s, marker_every=1.0,
                                          sessionizer_args=gap))  # fmt: skip
    run["sessionizer_args"] = list(gap)
    growth: dict[str, dict[str, float]] = {}
    for proc, samples in run["rss_mib"].items():
        after = [mib for t, mib in samples if plan.soak_warmup_s <= t <= plan.soak_s]
        if len(after) >= 2:
            base, tail = after[0], max(after[-max(1, len(after) // 4):])
            growth[proc] = {"after_warmup_mib": base, "last_quarter_max_mib": tail,
                            "growth_pct": 100 * (tail / base - 1)}  # fmt: skip
    run["rss_growth"] = growth
    return run


def stage_queries(plan: Plan, workdir: Path) -> dict[str, Any]:
    import _queries

    result: dict[str, Any] = _queries.run_queries(
        workdir, traces=plan.query_traces, mlflow_traces=plan.query_mlflow_traces, repeats=plan.query_repeats,
        settle_s=plan.query_settle_s,
    )
    return result


def stage_memory(plan: Plan, workdir: Path) -> dict[str, Any]:
    import _memory

    return _memory.broker_growth(workdir, duration_s=plan.memory_s, rate=plan.memory_rate)


def stage_soak_up(plan: Plan, workdir: Path) -> dict[str, Any]:
    import _memory

    return _memory.soak_up(workdir, duration_s=plan.soak_up_s, rate=plan.soak_up_rate,
                           warmup_s=plan.soak_up_warmup_s, sample_every_s=plan.soak_up_sample_s)  # fmt: skip


RUNNERS: dict[str, Callable[[Plan, Path], dict[str, Any]]] = {
    "sdk": stage_sdk, "ingest": stage_ingest, "up": stage_up, "soak": stage_soak, "queries": stage_queries,
    "memory": stage_memory, "soak-up": stage_soak_up,
}  # fmt: skip


def _progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="every stage small: a smoke test, not a measurement")
    p.add_argument("--out", type=Path, help="report directory (default benchmarks/reports/<UTC time>)")
    p.add_argument("--only", default=",".join(STAGES),
                   help=f"comma-separated stages of {', '.join(STAGES + LONG_STAGES)}")  # fmt: skip
    p.add_argument("--soak", action="store_true",
                   help="the 30-minute soak through `tracehouse up` at 1,000 traces/s (stage soak-up) alone")
    p.add_argument("--up-seconds", type=float, default=None,
                   help="stage up: run the highest paced rate this long (default 600; 120 to iterate)")
    args = p.parse_args(argv)
    stages = ["soak-up"] if args.soak else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES + LONG_STAGES]
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES + LONG_STAGES)}")
    plan = QUICK if args.quick else FULL
    if args.up_seconds:
        plan = dataclasses.replace(plan, up_paced_s=(*plan.up_paced_s[:-1], args.up_seconds))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out_dir = args.out or HERE / "reports" / started.replace(":", "")
    out_dir.mkdir(parents=True, exist_ok=True)
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)  # the sink runs in this process, tuned as `tracehouse sink` is
    report: dict[str, Any] = {"started": started, "quick": args.quick, "machine": machine(), "versions": versions(),
                              "plan": plan.__dict__, "stages": {}, "errors": {}}  # fmt: skip
    from _report import render

    for stage in stages:
        _progress(f"stage {stage} …")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"tracehouse-bench-{stage}-") as tmp:
            try:
                report["stages"][stage] = RUNNERS[stage](plan, Path(tmp))
            except Exception as exc:  # one failing stage must not lose the others' figures
                report["errors"][stage] = f"{type(exc).__name__}: {exc}"
                _progress(f"stage {stage} failed: {exc!r}")
        _progress(f"stage {stage} done in {time.monotonic() - t0:.0f} s")
        (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
        (out_dir / "report.md").write_text(render(report))
    _progress(f"report: {out_dir / 'report.md'}")
    print((out_dir / "report.md").read_text().split("\n## ", 1)[0])
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
