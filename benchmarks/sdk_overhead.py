"""Measure what tracing adds to one call in the application thread.

``python benchmarks/sdk_overhead.py [--bootstrap HOST:PORT] [--calls N]``

The measured call is a decorated function that opens one child span and calls
``update_current_trace`` (the README example). The publisher is enabled and pointed at
``--bootstrap`` (default: an unreachable address, so nothing is ever sent and the worker stays idle
retrying). Each call is timed with ``perf_counter_ns``; the same body undecorated is the baseline.
"""

from __future__ import annotations

import gc
import statistics
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


def _percentiles(samples: list[int]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] / 1000.0, cuts[98] / 1000.0


UNREACHABLE = "127.0.0.1:1"


def run(calls: int = 20_000, bootstrap: str = UNREACHABLE, topic_prefix: str = "bench.") -> dict[str, float]:
    """Run the benchmark, print the figures and return them (microseconds)."""
    configure(kafka_bootstrap=bootstrap, topic_prefix=topic_prefix, buffer_size=max(calls * 2, 1000))
    _measure(_traced, 2_000)  # warm up; starts the publisher thread
    gc.collect()
    baseline = _percentiles(_measure(_plain, calls))
    traced = _percentiles(_measure(_traced, calls))
    flushed = flush(timeout=10.0) if bootstrap != UNREACHABLE else False
    counters = stats()
    shutdown(timeout=0.5 if not flushed else 5.0)
    result = {
        "baseline_p50_us": baseline[0],
        "baseline_p99_us": baseline[1],
        "traced_p50_us": traced[0],
        "traced_p99_us": traced[1],
        "overhead_p50_us": traced[0] - baseline[0],
        "overhead_p99_us": traced[1] - baseline[1],
    }
    print(f"calls: {calls}, bootstrap: {bootstrap}")
    print(f"undecorated call   p50 {baseline[0]:7.2f} µs   p99 {baseline[1]:7.2f} µs")
    print(f"traced call        p50 {traced[0]:7.2f} µs   p99 {traced[1]:7.2f} µs")
    added = result["overhead_p50_us"], result["overhead_p99_us"]
    print(f"added by tracing   p50 {added[0]:7.2f} µs   p99 {added[1]:7.2f} µs")
    print(f"publisher: {counters}")
    return result


@click.command(help=(__doc__ or "").split("\n\n")[0])
@click.option("--bootstrap", default=UNREACHABLE, show_default=True, help="Kafka bootstrap (default: unreachable).")
@click.option("--calls", default=20_000, show_default=True, help="Timed calls of each kind.")
@click.option("--topic-prefix", default="bench.", show_default=True, help="Kafka topic prefix.")
def main(bootstrap: str, calls: int, topic_prefix: str) -> None:
    run(calls, bootstrap, topic_prefix)


if __name__ == "__main__":
    main()
