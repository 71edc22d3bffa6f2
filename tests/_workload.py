"""A small deterministic workload of trace events shared by client, server and CLI tests."""

from __future__ import annotations

import random
from typing import Literal

from tracehouse.schemas import Span, TagSetEvent, TraceEvent

BASE_MS = 1_795_000_000_000


def chat_workload(users: int = 5, sessions: int = 12, seed: int = 3) -> list[TraceEvent | TagSetEvent]:
    """Multi-turn sessions of a few users, with errors, two spans per trace and one later tag."""
    rng = random.Random(seed)
    events: list[TraceEvent | TagSetEvent] = []
    n = 0
    for s in range(sessions):
        user = f"user-{s % users}"
        session = f"session-{s:03d}"
        t = BASE_MS + s * 3_600_000
        for turn in range(rng.randint(2, 6)):
            n += 1
            trace_id = f"tr-{n:032x}"
            dur = rng.randint(20, 900)
            state: Literal["OK", "ERROR"] = "ERROR" if rng.random() < 0.15 else "OK"
            t0 = t * 1_000_000
            root, child = f"{n:012x}0001", f"{n:012x}0002"
            events.append(
                TraceEvent(
                    trace_id=trace_id,
                    timestamp_ms=t,
                    execution_time_ms=dur,
                    state=state,
                    client_request_id=f"req-{n}",
                    request_preview=f'{{"message": "question {turn} of {session}"}}',
                    response_preview="" if state == "ERROR" else f'"answer {turn}"',
                    metadata={"mlflow.trace.user": user, "mlflow.trace.session": session},
                    tags={"env": "prod" if s % 2 else "dev"},
                    spans=[
                        Span(span_id=root, name="chat", start_time_ns=t0, end_time_ns=t0 + dur * 1_000_000,
                             status="ERROR" if state == "ERROR" else "OK",
                             attributes={"mlflow.spanInputs": {"message": f"question {turn}"}}),
                        Span(span_id=child, parent_span_id=root, name="llm", span_type="LLM",
                             start_time_ns=t0 + 1_000_000, end_time_ns=t0 + (dur - 1) * 1_000_000),
                    ],
                )
            )
            t += dur + rng.randint(5_000, 60_000)
    first = events[0]
    assert isinstance(first, TraceEvent)
    events.append(TagSetEvent(trace_id=first.trace_id, key="reviewed", value="yes", timestamp_ns=(BASE_MS + 1) * 10**6))
    return events


def store_workload(uri: str, token: str | None = None) -> list[TraceEvent | TagSetEvent]:
    """Migrate the store at ``uri`` and write :func:`chat_workload` into it; returns the events."""
    from tracehouse.storage import RowBatch, Store, migrate, write_batch

    events = chat_workload()
    with Store(uri) as store:
        migrate(store)
        batch = RowBatch()
        for e in events:
            batch.add(e)
        write_batch(store, batch, token)
    return events
