"""Load generator: an app process tracing chat turns, through the tracehouse SDK or through ``mlflow``.

Each trace is a decorated call with two child spans (3 spans), user and session metadata and ~2 KB
of inputs and outputs; 2,000 users, 6 turns a session. Both sides run the same workload.

- ``--traces N`` stops after N traces; ``--duration S`` after S seconds.
- ``--rate R`` paces the calls at R traces/s (open loop: behind schedule it catches up without
  sleeping); ``0`` means as fast as the app thread can go. tracehouse also paces itself to keep the
  SDK's buffer from overflowing, so nothing is dropped.
- ``--marker-every S`` (tracehouse): every S seconds one call, by user ``freshness-probe``, carries
  ``client_request_id=fresh-K``,
  then ``flush()``; the moment ``flush()`` returns is printed as ``M fresh-K <unix seconds>`` so the
  benchmark can time when that trace becomes visible (freshness).

When the calls stop it prints ``E <traces> <unix seconds>`` (before the final flush), and its last
stdout line is a JSON summary: traces, CPU seconds, resident set, and ``waits``: how many times it
paused for the SDK's buffer to drain (backpressure).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

PAD = "lorem ipsum dolor sit amet " * 24  # ~650 chars per payload


class _Tracing(Protocol):
    """The part of the tracing API tracehouse and MLflow share."""

    def trace(self, *, span_type: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...

    def update_current_trace(self, **kwargs: Any) -> None: ...


def _chat_app(lib: _Tracing) -> Callable[[str, str, str, str | None], str]:
    """The same traced chat app over either library (tracehouse and MLflow share this API)."""

    @lib.trace(span_type="RETRIEVER")
    def retrieve(query: str) -> list[str]:
        return [PAD[:200], PAD[:180]]

    @lib.trace(span_type="LLM")
    def generate(query: str, docs: list[str]) -> str:
        return PAD

    @lib.trace(span_type="CHAIN")
    def chat(user_id: str, session_id: str, message: str, request_id: str | None) -> str:
        lib.update_current_trace(
            metadata={"mlflow.trace.user": user_id, "mlflow.trace.session": session_id}, client_request_id=request_id
        )
        return str(generate(message, retrieve(message)))

    return chat


def tracehouse_app(bootstrap: str, topic_prefix: str) -> tuple[Callable[[str, str, str, str | None], str], Any]:
    import tracehouse

    tracehouse.configure(kafka_bootstrap=bootstrap, topic_prefix=topic_prefix)
    return _chat_app(cast(_Tracing, tracehouse)), tracehouse


def mlflow_app(tracking_uri: str) -> tuple[Callable[[str, str, str, str | None], str], Any]:
    import logging
    import os

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    return _chat_app(cast(_Tracing, mlflow)), mlflow


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--side", choices=["tracehouse", "mlflow"], default="tracehouse")
    p.add_argument("--bootstrap", help="tracehouse: Kafka bootstrap")
    p.add_argument("--topic-prefix", default="tracehouse.")
    p.add_argument("--tracking-uri", help="mlflow: the server's URL")
    p.add_argument("--traces", type=int, default=0, help="stop after this many traces (0: use --duration)")
    p.add_argument("--duration", type=float, default=0.0)
    p.add_argument("--rate", type=float, default=0.0, help="traces/s; 0 = as fast as possible")
    p.add_argument("--marker-every", type=float, default=0.0)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--turns", type=int, default=6, help="traces per session")
    args = p.parse_args()
    if args.side == "tracehouse":
        chat, sdk = tracehouse_app(args.bootstrap, args.topic_prefix)
    else:
        chat, sdk = mlflow_app(args.tracking_uri)
    rng = random.Random(1)
    markers = 0
    start = time.perf_counter()
    next_marker = start + args.marker_every
    i = waits = 0
    while True:
        now = time.perf_counter()
        if (args.traces and i >= args.traces) or (args.duration and now - start >= args.duration):
            break
        if args.rate:
            ahead = start + i / args.rate - now
            if ahead > 0.0005:
                time.sleep(ahead)
        user, session = f"user-{rng.randrange(args.users)}", f"session-{i // args.turns}"
        if args.marker_every and now >= next_marker:
            markers += 1
            chat("freshness-probe", f"freshness-{markers}", f"question {i} {PAD[:300]}", f"fresh-{markers}")
            sdk.flush()
            print(f"M fresh-{markers} {time.time():.6f}", flush=True)
            next_marker = time.perf_counter() + args.marker_every
        else:
            chat(user, session, f"question {i} {PAD[:300]}", None)
        i += 1
        if args.side == "tracehouse" and i % 1000 == 0 and sdk.stats().buffered > 20_000:
            waits += 1
            while sdk.stats().buffered > 20_000:
                time.sleep(0.002)
    produced = time.perf_counter() - start
    print(f"E {i} {time.time():.6f}", flush=True)
    if args.side == "tracehouse":
        ok = sdk.flush(timeout=120)
        stats = sdk.stats()
        extra: dict[str, Any] = {"flushed": ok, "dropped": stats.dropped, "failed": stats.failed, "waits": waits}
    else:
        sdk.flush_trace_async_logging(terminate=True)
        extra = {}
    acked = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime
    json.dump({"traces": i, "markers": markers, "produce_s": produced, "acked_s": acked, "cpu_s": cpu_s,
               "max_rss_mb": usage.ru_maxrss / 1024, **extra}, sys.stdout)  # fmt: skip
    sys.stdout.write("\n")
    if args.side == "tracehouse":
        sdk.shutdown()


if __name__ == "__main__":
    main()
