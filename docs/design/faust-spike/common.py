"""Spike helpers: Tansu broker, a generated SDK-shaped workload, envelope producer."""
from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

PAD = "lorem ipsum dolor sit amet " * 12


def partition_of(key: bytes, n: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % n


def make_trace(i: int, user: str, session: str, ts: int, rng: random.Random) -> dict:
    err = rng.random() < 0.05
    start = ts * 1_000_000
    return {
        "type": "trace", "schema_version": 1,
        "trace_id": "tr-%032x" % (i + 1),
        "experiment_id": "0",
        "client_request_id": f"req-{i}",
        "timestamp_ms": ts,
        "execution_time_ms": rng.randrange(50, 3000),
        "state": "ERROR" if err else "OK",
        "request_preview": '{"message": "question %d %s"}' % (i, PAD[:120]),
        "response_preview": '"%s"' % PAD[:200],
        "metadata": {
            "mlflow.trace.user": user,
            "mlflow.trace.session": session,
            "mlflow.trace_schema.version": "3",
            "mlflow.trace.tokenUsage": '{"input_tokens": 42, "output_tokens": 17, "total_tokens": 59}',
        },
        "tags": {"env": "prod", "mlflow.traceName": "chat"},
        "spans": [
            {"span_id": "%016x" % (i * 3 + 1), "name": "chat", "span_type": "CHAIN",
             "start_time_ns": start, "end_time_ns": start + 400_000_000, "status": "ERROR" if err else "OK",
             "attributes": {"mlflow.spanInputs": {"message": PAD[:300]}, "mlflow.spanOutputs": PAD}},
            {"span_id": "%016x" % (i * 3 + 2), "parent_span_id": "%016x" % (i * 3 + 1), "name": "retrieve",
             "span_type": "RETRIEVER", "start_time_ns": start + 1, "end_time_ns": start + 60_000_000,
             "attributes": {"mlflow.spanInputs": {"query": PAD[:100]}, "mlflow.spanOutputs": [PAD[:200], PAD[:180]]}},
            {"span_id": "%016x" % (i * 3 + 3), "parent_span_id": "%016x" % (i * 3 + 1), "name": "llm",
             "span_type": "LLM", "start_time_ns": start + 61_000_000, "end_time_ns": start + 390_000_000,
             "attributes": {"mlflow.chat.tokenUsage": {"input_tokens": 42, "output_tokens": 17, "total_tokens": 59}}},
        ],
    }


def workload(traces: int, users: int = 2000, turns: int = 6, active: int = 3000, dup_rate: float = 0.01,
             seed: int = 1) -> list[tuple[bytes, bytes, dict]]:
    """(key, line, trace) in publish order. ``active`` sessions interleave; ~dup_rate re-sent traces."""
    rng = random.Random(seed)
    out = []
    sessions: list[list] = []  # [session_id, user, turns_left]
    next_session = 0
    ts = 1_795_000_000_000
    i = 0
    while len(out) < traces:
        while len(sessions) < active:
            sessions.append([f"session-{seed}-{next_session}", f"user-{rng.randrange(users)}", turns])
            next_session += 1
        k = rng.randrange(len(sessions))
        s = sessions[k]
        ts += rng.randrange(0, 3)
        t = make_trace(i, s[1], s[0], ts, rng)
        i += 1
        line = orjson.dumps(t)
        out.append((s[0].encode(), line, t))
        if rng.random() < dup_rate:
            out.append((s[0].encode(), line, t))
        s[2] -= 1
        if s[2] == 0:
            sessions[k] = sessions[-1]
            sessions.pop()
    return out[:traces]


def envelopes(items, partitions: int, per_envelope: int) -> list[tuple[int, bytes, bytes, int]]:
    """(partition, key, value, count), per-partition runs of ``per_envelope`` lines, publish order."""
    open_: dict[int, list] = defaultdict(list)
    out = []
    for key, line, _ in items:
        p = partition_of(key, partitions)
        buf = open_[p]
        if not buf:
            buf.append(key)
        buf.append(line)
        if len(buf) - 1 >= per_envelope:
            out.append((p, buf[0], b"\n".join(buf[1:]), len(buf) - 1))
            open_[p] = []
    for p, buf in open_.items():
        if buf:
            out.append((p, buf[0], b"\n".join(buf[1:]), len(buf) - 1))
    return out


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in names if t not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, envs) -> float:
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20,
                            max_request_size=16 << 20, acks=1, enable_idempotence=False)
    await prod.start()
    t0 = time.perf_counter()
    try:
        futs = []
        for p, key, value, n in envs:
            futs.append(await prod.send(topic, value=value, key=key, partition=p,
                                        headers=[("th-format", b"ndjson"), ("th-count", str(n).encode())]))
            if len(futs) > 2000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await prod.stop()
    return time.perf_counter() - t0
