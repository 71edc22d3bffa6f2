"""Load generator for the ingest benchmark: an app process tracing chat turns through the SDK.

Each trace is a decorated call with two child spans (3 spans), user and session metadata and ~2 KB
of inputs and outputs. It paces itself only to keep the SDK buffer from overflowing (no drops).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time

import tracehouse

PAD = "lorem ipsum dolor sit amet " * 24  # ~650 chars per payload


@tracehouse.trace(span_type="RETRIEVER")
def retrieve(query: str) -> list[str]:
    return [PAD[:200], PAD[:180]]


@tracehouse.trace(span_type="LLM")
def generate(query: str, docs: list[str]) -> str:
    return PAD


@tracehouse.trace(span_type="CHAIN")
def chat(user_id: str, session_id: str, message: str) -> str:
    tracehouse.update_current_trace(metadata={"mlflow.trace.user": user_id, "mlflow.trace.session": session_id})
    return generate(message, retrieve(message))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic-prefix", required=True)
    p.add_argument("--traces", type=int, default=100_000)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--turns", type=int, default=6, help="traces per session")
    args = p.parse_args()
    tracehouse.configure(kafka_bootstrap=args.bootstrap, topic_prefix=args.topic_prefix)
    rng = random.Random(1)
    start = time.perf_counter()
    for i in range(args.traces):
        session = i // args.turns
        chat(f"user-{rng.randrange(args.users)}", f"session-{session}", f"question {i} {PAD[:300]}")
        if i % 1000 == 0:
            while tracehouse.stats().buffered > 20_000:
                time.sleep(0.002)
    produced = time.perf_counter() - start
    ok = tracehouse.flush(timeout=120)
    acked = time.perf_counter() - start
    stats = tracehouse.stats()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    json.dump({"traces": args.traces, "produce_s": produced, "acked_s": acked, "flushed": ok,
               "dropped": stats.dropped, "failed": stats.failed,
               "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024}, sys.stdout)  # fmt: skip
    sys.stdout.write("\n")
    tracehouse.shutdown()


if __name__ == "__main__":
    main()
