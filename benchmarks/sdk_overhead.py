"""Measure what tracing adds to one call in the application thread.

``python benchmarks/sdk_overhead.py [--bootstrap HOST:PORT] [--calls N] [--fresh-runs R]``

The measured call is a decorated function that opens one child span and calls
``update_current_trace`` (the README example). The publisher is enabled and pointed at
``--bootstrap`` (default: an unreachable address, so nothing is ever sent and the worker stays idle
retrying). Each call is timed with ``perf_counter_ns``; the same body undecorated is the baseline.

Figures: p50, p99 and max of ``--calls`` calls after a warm-up, and the *first* traced call of a fresh
process (``--fresh-runs`` processes per way of starting; median and worst): after ``configure()``
(which starts the publisher), and with the environment only (the first call starts the publisher
thread, which then imports aiokafka; the max of the next 100 calls shows what that costs them).
Figures, never assertions: they depend on the machine and its load.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from tracehouse import configure, flush, shutdown, start_span, stats, trace, update_current_trace


def _body(user_id: str, session_id: str, message: str) -> str:
    return message.upper()


@trace
def _traced(user_id: str, session_id: str, message: str) -> str:
    update_current_trace(
        metadata={"mlflow.trace.user": user_id, "mlflow.trace.session": session_id},
        client_request_id="req-abc-123",
        tags={"env": "bench"},
    )
    with start_span("retrieve", span_type="RETRIEVER") as span:
        span.set_inputs({"query": message})
        span.set_outputs(["doc-1", "doc-7"])
    return message.upper()


def _plain(user_id: str, session_id: str, message: str) -> str:
    with _NullScope():
        _body(user_id, session_id, message)
    return message.upper()


class _NullScope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _measure(fn: Callable[[str, str, str], str], calls: int) -> list[int]:
    samples: list[int] = []
    clock = time.perf_counter_ns
    for i in range(calls):
        session = f"session-{i % 100}"
        start = clock()
        fn("user-1", session, "What is the refund policy?")
        samples.append(clock() - start)
    return samples


def _percentiles(samples: list[int]) -> tuple[float, float, float]:
    """p50, p99 and max, in microseconds."""
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] / 1000.0, cuts[98] / 1000.0, max(samples) / 1000.0


def _probe(mode: str, bootstrap: str) -> dict[str, float]:
    """In this (fresh) process: time ``configure()`` (mode ``configure``) and the first traced calls."""
    clock = time.perf_counter_ns
    start = clock()
    if mode == "configure":
        configure(kafka_bootstrap=bootstrap, topic_prefix="bench.")
    configured = clock()
    samples = _measure(_traced, 101)
    return {"configure_us": (configured - start) / 1000.0, "first_us": samples[0] / 1000.0,
            "next_100_max_us": max(samples[1:]) / 1000.0}  # fmt: skip


def _fresh(mode: str, bootstrap: str, runs: int) -> dict[str, float]:
    """:func:`_probe` in ``runs`` fresh interpreters: the median and the worst of each figure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEHOUSE_")}
    env.update(TRACEHOUSE_KAFKA_BOOTSTRAP=bootstrap, TRACEHOUSE_TOPIC_PREFIX="bench.",
               TRACEHOUSE_SHUTDOWN_TIMEOUT="0.5" if bootstrap == UNREACHABLE else "5")  # fmt: skip
    probes = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, __file__, "--probe", mode, "--bootstrap", bootstrap],
                              capture_output=True, text=True, env=env, timeout=120, check=True)  # fmt: skip
        probes.append(json.loads(done.stdout.strip().splitlines()[-1]))
    out: dict[str, float] = {}
    for key in probes[0]:
        values = [p[key] for p in probes]
        out[f"{key}_median"] = statistics.median(values)
        out[f"{key}_worst"] = max(values)
    return out


UNREACHABLE = "127.0.0.1:1"


def _loop(fn: Callable[[str, str, str], str], calls: int) -> None:
    for i in range(calls):
        fn("user-1", f"session-{i % 100}", "What is the refund policy?")


def amortized(calls: int, flush_timeout: float = 120.0) -> float | None:
    """The SDK's whole cost per traced call, publisher thread included: (N decorated calls plus
    ``flush()``, minus the same N calls undecorated) / N, in microseconds. The app waits for the GIL
    while the publisher encodes and sends, which a p50 of single calls does not see. ``None`` when the
    flush did not complete (no reachable broker)."""
    clock = time.perf_counter
    t0 = clock()
    _loop(_plain, calls)
    plain_s = clock() - t0
    t0 = clock()
    _loop(_traced, calls)
    if not flush(timeout=flush_timeout):
        return None
    traced_s = clock() - t0
    return (traced_s - plain_s) / calls * 1e6


def run(calls: int = 20_000, bootstrap: str = UNREACHABLE, topic_prefix: str = "bench.", fresh_runs: int = 0
        ) -> dict[str, float]:  # fmt: skip
    """Run the benchmark, print the figures and return them (microseconds). ``fresh_runs`` > 0 also times
    the first traced call in that many fresh processes per way of starting the SDK."""
    configure(kafka_bootstrap=bootstrap, topic_prefix=topic_prefix, buffer_size=max(calls * 2, 1000))
    _measure(_traced, 2_000)  # warm up; starts the publisher thread
    gc.collect()
    baseline = _percentiles(_measure(_plain, calls))
    traced = _percentiles(_measure(_traced, calls))
    flushed = flush(timeout=60.0) if bootstrap != UNREACHABLE else False
    whole = amortized(calls) if flushed else None
    counters = stats()
    shutdown(timeout=0.5 if not flushed else 5.0)
    result = {
        "baseline_p50_us": baseline[0],
        "baseline_p99_us": baseline[1],
        "baseline_max_us": baseline[2],
        "traced_p50_us": traced[0],
        "traced_p99_us": traced[1],
        "traced_max_us": traced[2],
        "overhead_p50_us": traced[0] - baseline[0],
        "overhead_p99_us": traced[1] - baseline[1],
    }
    if whole is not None:
        result["amortized_us"] = whole
    print(f"calls: {calls}, bootstrap: {bootstrap}, Python {sys.version.split()[0]}, {os.cpu_count()} CPU(s)")
    print(f"undecorated call   p50 {baseline[0]:7.2f} µs   p99 {baseline[1]:7.2f} µs   max {baseline[2]:9.2f} µs")
    print(f"traced call        p50 {traced[0]:7.2f} µs   p99 {traced[1]:7.2f} µs   max {traced[2]:9.2f} µs")
    added = result["overhead_p50_us"], result["overhead_p99_us"]
    print(f"added by tracing   p50 {added[0]:7.2f} µs   p99 {added[1]:7.2f} µs")
    if whole is not None:
        print(f"whole cost per call, publisher thread and flush() included: {whole:7.2f} µs")
    print(f"publisher: {counters}")
    for mode, title in (("configure", "after configure()"), ("lazy", "environment only, no configure()")):
        if fresh_runs <= 0:
            break
        fresh = _fresh(mode, bootstrap, fresh_runs)
        result.update({f"{mode}_{k}": v for k, v in fresh.items()})
        print(f"first traced call of a fresh process, {title} ({fresh_runs} processes): "
              f"median {fresh['first_us_median']:8.1f} µs, worst {fresh['first_us_worst']:8.1f} µs; "
              f"next 100 calls' max: median {fresh['next_100_max_us_median']:8.1f} µs, "
              f"worst {fresh['next_100_max_us_worst']:8.1f} µs"
              + (f"; configure() itself: median {fresh['configure_us_median'] / 1000:6.1f} ms"
                 if mode == "configure" else ""))  # fmt: skip
    return result


@click.command(help=(__doc__ or "").split("\n\n")[0])
@click.option("--bootstrap", default=UNREACHABLE, show_default=True, help="Kafka bootstrap (default: unreachable).")
@click.option("--calls", default=20_000, show_default=True, help="Timed calls of each kind.")
@click.option("--topic-prefix", default="bench.", show_default=True, help="Kafka topic prefix.")
@click.option("--fresh-runs", default=5, show_default=True, help="Fresh processes timing the first traced call.")
@click.option("--probe", type=click.Choice(["configure", "lazy"]), hidden=True)
def main(bootstrap: str, calls: int, topic_prefix: str, fresh_runs: int, probe: str | None) -> None:
    if probe is not None:  # one fresh process of _fresh()
        print(json.dumps(_probe(probe, bootstrap)))
        return
    run(calls, bootstrap, topic_prefix, fresh_runs)


if __name__ == "__main__":
    main()
