"""An instrumented app, run as a subprocess by tests/test_sdk_faults.py.

``python tests/_sdk_app.py BOOTSTRAP TOPIC_PREFIX CALLS BUFFER_SIZE``

Configures logging as an app typically does (``basicConfig`` at INFO, to stderr), configures the SDK,
makes ``CALLS`` traced calls (whatever state the broker is in) and prints one JSON line. Then it
answers commands read from stdin, one JSON line each:

* ``status``: the SDK's counters, and how many aiokafka records the SDK kept off the app's logs;
* ``flush SECONDS``: ``tracehouse.flush(SECONDS)``, then the counters;
* ``exit``: leaves (the SDK's exit flush and report run at interpreter exit).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from typing import Any

import tracehouse


class _Count(logging.Handler):
    """Counts the aiokafka records the SDK re-emits at DEBUG on ``tracehouse.kafka`` (kept off the app's
    handlers: this logger does not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@tracehouse.trace
def answer(user_id: str, session_id: str, index: int) -> int:
    tracehouse.update_current_trace(
        metadata={"mlflow.trace.user": user_id, "mlflow.trace.session": session_id},
        client_request_id=f"call-{index}",
    )
    return index * 2


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    bootstrap, prefix, calls, buffer_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    logging.basicConfig(level=logging.INFO)
    suppressed = _Count()
    kafka = logging.getLogger("tracehouse.kafka")
    kafka.setLevel(logging.DEBUG)
    kafka.propagate = False
    kafka.addHandler(suppressed)
    tracehouse.configure(kafka_bootstrap=bootstrap, topic_prefix=prefix, buffer_size=buffer_size, linger_ms=5)
    results = [answer(f"user-{i % 7}", f"session-{i % 13}", i) for i in range(calls)]
    wrong = sum(1 for i, r in enumerate(results) if r != i * 2)
    _say(phase="called", wrong=wrong, **dataclasses.asdict(tracehouse.stats()))
    for line in sys.stdin:
        command, *args = line.split()
        if command == "exit":
            return
        flushed = tracehouse.flush(float(args[0])) if command == "flush" else None
        _say(flushed=flushed, suppressed=suppressed.count, **dataclasses.asdict(tracehouse.stats()))


if __name__ == "__main__":
    main()
