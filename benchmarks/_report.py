"""Render the suite's JSON report as Markdown: the headline table against the targets, then details."""

from __future__ import annotations

from typing import Any


def _n(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


def _runs(values: list[float], digits: int = 0) -> str:
    return ", ".join(_n(v, digits) for v in values)


def _no_verdict(ok: bool | None) -> str:
    return "—"


def _judge(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def headline(report: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """``(figure, tracehouse, MLflow, ratio, target, verdict)`` rows for the stages that ran. Quick runs
    get no verdicts: their sizes are too small to mean anything against the targets."""
    st = report["stages"]
    _verdict = _no_verdict if report.get("quick") else _judge
    rows: list[tuple[str, str, str, str, str, str]] = []
    if sdk := st.get("sdk"):
        th, ml = sdk["tracehouse"]["added_p50_us"], sdk["mlflow"]["added_p50_us"]
        rows.append(("SDK cost per traced call, p50 added (µs)", f"{_n(th['median'], 2)} ({_runs(th['runs'], 2)})",
                     f"{_n(ml['median'])} ({_runs(ml['runs'])})", f"{sdk['ratio']:,.0f}×", "≤ 15 µs, ≥ 20×",
                     _verdict(th["median"] <= 15 and sdk["ratio"] >= 20)))  # fmt: skip
        if "ratio_amortized" in sdk:
            th, ml = sdk["tracehouse"]["amortized_us"], sdk["mlflow"]["amortized_us"]
            rows.append(("SDK whole cost per traced call: (N calls + flush() − N undecorated) / N (µs)",
                         f"{_n(th['median'], 2)} ({_runs(th['runs'], 2)})",
                         f"{_n(ml['median'])} ({_runs(ml['runs'])}; not flushed)", f"{sdk['ratio_amortized']:,.0f}×",
                         "≤ 15 µs, ≥ 50×", _verdict(th["median"] <= 15 and sdk["ratio_amortized"] >= 50)))
    if ing := st.get("ingest"):
        th, ml = ing["tracehouse"]["stored_rate"], ing["mlflow"]["stored_rate"]
        lost = ", ".join(f"{r['lost_pct']:.0f} %" for r in ing["mlflow"]["runs"])
        rows.append(("End-to-end ingest, traces/s stored (sessions + rollups)",
                     f"{_n(th['median'])} ({_runs(th['runs'])})",
                     f"{_n(ml['median'], 1)} ({_runs(ml['runs'], 1)}; lost {lost})", f"{ing['ratio']:,.0f}×",
                     "≥ 8,000/s, ≥ 300×", _verdict(th["median"] >= 8000 and ing["ratio"] >= 300)))  # fmt: skip
        cpu = ing["tracehouse"]["cpu_us_per_trace"]
        outside = sum(v for k, v in cpu.items() if k not in ("total",) and not k.startswith("app"))
        app = next((v for k, v in cpu.items() if k.startswith("app")), None)
        rows.append(("CPU per stored trace, roles apart: all processes but the app / the app (µs)",
                     f"{_n(outside)} / {_n(app or 0)}", "—", "—", "≤ 150 / ≤ 100",
                     _verdict(outside <= 150 and (app or 0) <= 100)))  # fmt: skip
    if up := st.get("up"):
        for rate, runs in up["paced"].items():
            for r in runs:
                fresh = r["freshness_ms"] or {}
                rows.append((f"`up` paced {int(rate):,}/s for {r['duration_s']:.0f} s: freshness p95, polled every "
                             f"{r['poll_s'] * 1000:.0f} ms (ms)",
                             f"{_n(fresh.get('p95', 0))} (p50 {_n(fresh.get('p50', 0))}, n {fresh.get('n', 0)}, "
                             f"unseen {r['markers_unseen']})", "—", "—", "p95 ≤ 1,000 ms",
                             _verdict(bool(fresh) and fresh["p95"] <= 1000 and not r["markers_unseen"])))  # fmt: skip
                rows.append((f"`up` paced {int(rate):,}/s for {r['duration_s']:.0f} s: backlog at the end, SDK drops, "
                             "backpressure events",
                             f"{_n(r['backlog_at_end'])} traces ({r['backlog_s']} s); {r['sdk']['dropped']} dropped; "
                             f"{r['backpressure_events']} events; complete {r['complete']}", "—", "—",
                             "≤ 2 s; 0; 0", _verdict(r["backlog_s"] is not None and r["backlog_s"] <= 2
                                                     and not r["sdk"]["dropped"] and not r["backpressure_events"]
                                                     and r["complete"])))  # fmt: skip
        flat = up["flat"]["stored_rate"]
        rows.append(("`up` flat out, traces/s stored", f"{_n(flat['median'])} ({_runs(flat['runs'])})", "—", "—",
                     "≥ 8,000/s", _verdict(flat["median"] >= 8000)))  # fmt: skip
        cpu = up["flat"]["runs"][0]["cpu_us_per_trace"]
        app = next((v for k, v in cpu.items() if k.startswith("app")), 0.0)
        rows.append(("CPU per stored trace through `up` flat out: all processes but the app / the app (µs)",
                     f"{_n(cpu['outside_app'])} / {_n(app)}", "—", "—", "≤ 150 / ≤ 100",
                     _verdict(cpu["outside_app"] <= 150 and app <= 100)))  # fmt: skip
    if soak := st.get("soak"):
        fresh = soak.get("freshness_ms")
        rate = f"{soak['rate_offered']:,.0f}/s"
        rows.append((f"Freshness at {rate}, flush() → searchable, p95 (ms)",
                     f"{_n(fresh['p95'])} (p50 {_n(fresh['p50'])}, n {fresh['n']})" if fresh else "no markers", "—",
                     "—", "p95 ≤ 1,000 ms", _verdict(bool(fresh) and fresh["p95"] <= 1000)))  # fmt: skip
        growth = soak.get("rss_growth", {})
        worst = max(growth.items(), key=lambda kv: kv[1]["growth_pct"], default=None)
        rows.append((f"Resident set over {soak['duration_s']:.0f} s at {rate}, growth after warm-up",
                     f"{worst[1]['growth_pct']:+.1f} % ({worst[0]})" if worst else "no samples", "—", "—",
                     "≤ 10 % per process", _verdict(worst[1]["growth_pct"] <= 10 if worst else None)))  # fmt: skip
        kept_up = soak["backlog_at_end"] <= soak["rate_offered"] * 2
        rows.append((f"Storage keeps up at {rate} for {soak['duration_s']:.0f} s (backlog at the end)",
                     f"{_n(soak['backlog_at_end'])} traces", "—", "—", "≤ 2 s of traffic", _verdict(kept_up)))
    if mem := st.get("memory"):
        z, n = mem["runs"].get("zstd", []), mem["runs"].get("none", [])
        rows.append((f"Broker growth per trace at {mem['rate']:,.0f}/s for {mem['duration_s']:.0f} s (KiB)",
                     f"zstd {_runs([r['kib_per_trace'] for r in z], 2)}",
                     f"none {_runs([r['kib_per_trace'] for r in n], 2)}" if n else "—",
                     f"{mem['ratio_none_over_zstd']}× less" if mem.get("ratio_none_over_zstd") else "—",
                     "≤ 1 KiB per trace", _verdict(mem["met"])))  # fmt: skip
    if soak_up := st.get("soak-up"):
        others = {k: v for k, v in soak_up["processes"].items() if not k.startswith("broker")}
        worst = max(others.items(), key=lambda kv: kv[1]["growth_pct"], default=None)
        growth = f"{worst[1]['growth_pct']:+.1f} % ({worst[0]})" if worst else "—"
        rows.append((f"`up` at {soak_up['rate']:,.0f}/s for {soak_up['duration_s'] / 60:.0f} min: growth after "
                     "warm-up, other than the broker", growth, "—", "—", "≤ 10 % per process",
                     _verdict(soak_up["others_within_10pct"])))  # fmt: skip
    if q := st.get("queries"):
        sizes = q["sizes"]
        at = f"{sizes['tracehouse_traces']:,} vs {sizes['mlflow_traces']:,} traces"
        for kind, v in q["search"].items():
            th, ml = v["tracehouse"], v["mlflow"]
            rows.append((f"Search, {kind}, first 100, p50 (ms; {at})", f"{th['p50']:.1f} (p95 {th['p95']:.1f})",
                         f"{ml['p50']:.1f} (p95 {ml['p95']:.1f})", f"{v['ratio_mlflow_over_tracehouse_p50']:,.1f}×",
                         "p50 ≤ 30, p95 ≤ 50 ms at 10 M", _verdict(th["p50"] <= 30 and th["p95"] <= 50)))  # fmt: skip
        u = q["users_table"]["tracehouse"]
        rows.append((f"Users table, top 100 (ms; {sizes['tracehouse_traces']:,} traces)",
                     f"p50 {u['p50']:.1f}, p95 {u['p95']:.1f}", "—", "—", "≤ 100 ms", _verdict(u["p95"] <= 100)))
        for key, v in q["session_timeline"].items():
            t = v["tracehouse"]
            limit = 50 if "1000" in key or "1,000" in key else 80
            rows.append((f"Session timeline, {key}, first page (ms)", f"p50 {t['p50']:.1f}, p95 {t['p95']:.1f}",
                         "—", "—", f"p50 ≤ {limit} ms", _verdict(t["p50"] <= limit)))  # fmt: skip
    return rows


def render(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["versions"]
    lines = [
        f"# tracehouse benchmark report{' (quick mode: a smoke test, not a measurement)' if report['quick'] else ''}",
        "",
        f"Started {report['started']} on {m['cores']} cores, {m['memory_gib']} GiB ({m['cpu']}), Python "
        f"{m['python']}, {m['platform']}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "| figure | tracehouse (median; runs) | MLflow (median; runs) | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in headline(report)]
    for stage, err in report.get("errors", {}).items():
        lines.append(f"\nStage `{stage}` failed: {err}")
    st = report["stages"]
    if ing := st.get("ingest"):
        lines += ["", "## Ingest: CPU time per stored trace, by process (µs, median of runs)", "",
                  "| process | µs per trace |", "|---|---|"]  # fmt: skip
        lines += [f"| {k} | {val:,.0f} |" for k, val in ing["tracehouse"]["cpu_us_per_trace"].items()]
        for r in ing["tracehouse"]["runs"]:
            s = r["stored"]
            lines.append(f"\nRun: sent {r['sent']:,} at {r['sent_rate']:,.0f}/s; stored {s['traces']:,} traces, "
                         f"{s['spans']:,} spans, {s['sessions']:,} sessions ({s['session_turns']:,} turns), rollups "
                         f"{s['rollup_interactions']:,} interactions; complete: {r['complete']}; SDK dropped "
                         f"{r['sdk']['dropped']}.")  # fmt: skip
        for r in ing["mlflow"]["runs"]:
            lines.append(f"\nMLflow run: sent {r['sent']:,} in {r['duration_s']:.0f} s, stored {r['stored']:,} "
                         f"({r['lost_pct']:.0f} % lost) after {r['elapsed_s']:.0f} s; CPU µs per stored trace: "
                         + ", ".join(f"{k} {val:,.0f}" for k, val in r["cpu_us_per_stored_trace"].items()) + ".")
    if up := st.get("up"):
        lines += ["", "## Through `tracehouse up`: CPU per stored trace (µs), by process and by thread of `up`", ""]
        for r in [*(x for runs in up["paced"].values() for x in runs), *up["flat"]["runs"]]:
            lines += _up_run_lines(r)
    if soak := st.get("soak"):
        lines += ["", f"## Soak at {soak['rate_offered']:,.0f} traces/s: resident set (MiB)", "",
                  "| process | after warm-up | max of last quarter | growth |", "|---|---|---|---|"]  # fmt: skip
        for proc, g in soak.get("rss_growth", {}).items():
            lines.append(f"| {proc} | {g['after_warmup_mib']:,.0f} | {g['last_quarter_max_mib']:,.0f} | "
                         f"{g['growth_pct']:+.1f} % |")  # fmt: skip
        lines += ["", "CPU µs per stored trace: "
                  + ", ".join(f"{k} {val:,.0f}" for k, val in soak["cpu_us_per_trace"].items()) + "."]
        lines.append(f"Stored: {soak['stored']['traces']:,} traces of {soak['sent']:,} sent; complete: "
                     f"{soak['complete']}.")  # fmt: skip
    if mem := st.get("memory"):
        lines += ["", f"## Embedded broker memory at {mem['rate']:,.0f} traces/s for {mem['duration_s']:.0f} s", "",
                  "| codec | traces stored | idle MiB | peak MiB | KiB per trace | stored/s |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for codec, runs in mem["runs"].items():
            lines += [f"| {codec} | {r['traces']:,} | {r['idle_mib']:.1f} | {r['peak_mib']:.1f} | "
                      f"{r['kib_per_trace']:.2f} | {r['stored_rate']:,.0f} |" for r in runs]  # fmt: skip
    if soak_up := st.get("soak-up"):
        minutes = soak_up["duration_s"] / 60
        lines += ["", f"## `tracehouse up` at {soak_up['rate']:,.0f} traces/s for {minutes:.0f} min "
                  f"(warm-up {soak_up['warmup_s']:.0f} s): resident set (MiB)", "",
                  "| process | after warm-up | last quarter max | peak | slope MiB/h | growth |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for proc, g in soak_up["processes"].items():
            slope = "—" if g["slope_mib_per_h"] is None else f"{g['slope_mib_per_h']:+.1f}"
            lines.append(f"| {proc} | {g['after_warmup_mib']:,.0f} | {g['last_quarter_max_mib']:,.0f} | "
                         f"{g['peak_mib']:,.0f} | {slope} | {g['growth_pct']:+.1f} % |")  # fmt: skip
        lines += ["", f"Sent {soak_up['sent']:,}, stored {soak_up['stored'] or 0:,}; broker generations: "
                  f"{soak_up['broker_generations']} (a new one at {soak_up['broker_memory_limit_mb']:.0f} MiB)."]
    if q := st.get("queries"):
        b = q.get("build", {})
        lines += ["", "## Queries: data", "", "```", _json_short(q["sizes"]), _json_short(b), "```"]
    return "\n".join(lines) + "\n"


def _up_run_lines(r: dict[str, Any]) -> list[str]:
    s = r["stored"]
    threads = list(r["up_threads_us_per_trace"].items())[:8]
    return [
        f"- {r['mode']} for {r['duration_s']:.0f} s (warm-up {r['warmup_s']:.0f} s): sent {r['sent']:,} at "
        f"{r['sent_rate']:,.0f}/s, stored {r['stored_rate']:,.0f}/s; stored {s['unique_traces']:,} traces, "
        f"{s['sessions']:,} sessions ({s['session_turns']:,} turns), rollups {s['rollup_interactions']:,}; "
        f"complete {r['complete']}; drained {r['drained_after_s']} s after the load stopped; broker "
        f"generations {r['broker_generations']}.",
        "  processes: " + ", ".join(f"{k} {v:,.0f}" for k, v in r["cpu_us_per_trace"].items()) + ".",
        "  threads of `up`: " + ", ".join(f"{k} {v:,.0f}" for k, v in threads) + ".",
    ]


def _json_short(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in d.items())
