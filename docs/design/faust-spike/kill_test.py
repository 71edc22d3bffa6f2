"""Exactness under SIGKILL / two workers, and changelog recovery, for the app2 dict_rollup design on Tansu.

python kill_test.py --scenario kill|two|recovery
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, "/tmp/faustspike")
import msgspec  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from app2 import TraceLite, add_delta, apply_trace, session_of, _enc, SessionState  # noqa: E402
from common import create_topics, envelopes, produce, workload  # noqa: E402

from tracehouse.embedded import TansuBroker  # noqa: E402

HERE = Path("/tmp/faustspike")
PY = "/work/main/.venv/bin/python"
P = 8
TRUE_END: dict = {}


def true_end(bootstrap, topic):
    msgs = asyncio.run(read_all(bootstrap, topic))
    end = {TopicPartition(topic, p): 0 for p in range(P)}
    for m in msgs:
        tp = TopicPartition(topic, m.partition)
        end[tp] = max(end[tp], m.offset + 1)
    TRUE_END[topic] = end


def spawn(bootstrap, app_id, topic, rollups, *extra, log_name=None):
    log = open(HERE / "results" / f"{log_name or app_id}-{uuid.uuid4().hex[:4]}.log", "wb")
    cmd = [PY, str(HERE / "app2.py"), "--bootstrap", bootstrap, "--app-id", app_id, "--traces-topic", topic,
           "--rollups-topic", rollups, "--mode", "dict_rollup", "--flush-ms", "200", "--loglevel", "INFO", *extra]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE))


async def lag(bootstrap, group, topic):
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(P)]
        end = TRUE_END.get(topic) or await c.end_offsets(tps)  # Tansu under-reports end_offsets
        total = 0
        for tp in tps:
            committed = await c.committed(tp) or 0
            total += end[tp] - committed
        return total
    finally:
        await c.stop()


async def read_all(bootstrap, topic):
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(P)]
        c.assign(tps)
        end = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        idle = 0
        out = []
        async def behind():
            for tp in tps:
                if await c.position(tp) < end[tp]:
                    return True
            return False
        while await behind():
            batch = await c.getmany(timeout_ms=500, max_records=5000)
            for tp, msgs in batch.items():
                out.extend(msgs)
        while idle < 2:  # Tansu's end offset is the last batch's base offset + 1: read on until idle
            batch = await c.getmany(timeout_ms=300, max_records=5000)
            idle = 0 if batch else idle + 1
            for tp, msgs in batch.items():
                out.extend(msgs)
        return out
    finally:
        await c.stop()


def truth(items):
    sessions: dict[str, SessionState] = {}
    deltas: dict = {}
    seen = set()
    for _, line, _t in items:
        t = msgspec.json.decode(line, type=TraceLite)
        sid = session_of(t)
        st, new = apply_trace(sessions.get(sid), sid, t)
        sessions[sid] = st
        if new:
            add_delta(deltas, t, sid)
    return sessions, deltas


def check_rollups(msgs, want):
    got: dict = {}
    seen = set()
    dup_msgs = 0
    for m in msgs:
        src = dict(m.headers)["th-src"]
        ident = (m.partition, src)
        if ident in seen:  # replayed envelope: same (target partition, source partition:offset)
            dup_msgs += 1
            continue
        seen.add(ident)
        for line in m.value.split(b"\n"):
            d = json.loads(line)
            key = (d[0], d[1])
            g = got.setdefault(key, [0, 0, 0, set()])
            g[0] += d[2]
            g[1] += d[3]
            g[2] += d[4]
            g[3].update(d[8])
    bad = 0
    for key, w in want.items():
        g = got.get(key)
        if g is None or g[0] != w.traces or g[1] != w.errors or g[2] != w.sum_ms or g[3] != w.sessions:
            bad += 1
    return {"rollup_keys": len(want), "rollup_mismatch": bad + len(set(got) - set(want)), "dup_delta_msgs": dup_msgs,
            "delta_msgs": len(msgs)}


async def wait_drained(bootstrap, group, topic, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if await lag(bootstrap, group, topic) == 0:
            return time.time() - t0
        await asyncio.sleep(0.5)
    raise TimeoutError("not drained")


def dump_and_compare(bootstrap, app_id, topic, rollups, want_sessions):
    dump = HERE / "results" / f"dump-{app_id}.json"
    dump.unlink(missing_ok=True)
    proc = spawn(bootstrap, app_id, topic, rollups, "--dump", str(dump), "--dump-state", log_name=f"{app_id}-dump")
    t0 = time.time()
    while not dump.exists() and time.time() - t0 < 120:
        time.sleep(0.2)
    proc.terminate()
    proc.wait(20)
    d = json.loads(dump.read_text())
    got = d.pop("state")
    mism = 0
    for sid, w in want_sessions.items():
        g = got.get(sid)
        wb = msgspec.to_builtins(w)
        if g is None or g[:-1] + [sorted(g[-1])] != wb[:-1] + [sorted(wb[-1])]:
            mism += 1
    d.update(sessions=len(want_sessions), session_mismatch=mism + len(set(got) - set(want_sessions)))
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="kill")
    ap.add_argument("--traces", type=int, default=60_000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--keys", type=int, default=10_000)
    a = ap.parse_args()
    broker = TansuBroker(log_path=HERE / "tansu-kill.log").start()
    bs = broker.bootstrap
    tag = uuid.uuid4().hex[:6]
    topic, rollups = f"k{tag}.traces.v1", f"k{tag}.user-rollups.v1"
    app_id = f"sess-{tag}"
    try:
        asyncio.run(create_topics(bs, [topic, rollups], P))
        if a.scenario == "recovery":
            return recovery(bs, app_id, topic, rollups, a.keys)
        items = workload(a.traces)
        want_s, want_d = truth(items)
        asyncio.run(produce(bs, topic, envelopes(items, P, a.n)))
        true_end(bs, topic)
        res: dict = {"scenario": a.scenario, "traces": a.traces}
        if a.scenario == "kill":
            # worker SIGKILLs itself after 40 % of the traces (unflushed state + unacked offsets in flight)
            w1 = spawn(bs, app_id, topic, rollups, "--kill-after", str(int(a.traces * 0.4)))
            w1.wait(120)
            res["first_exit"] = w1.returncode
            res["lag_after_kill"] = asyncio.run(lag(bs, app_id, topic))
            w2 = spawn(bs, app_id, topic, rollups)
            res["drain_s"] = asyncio.run(wait_drained(bs, app_id, topic))
            time.sleep(1)
            w2.terminate()
            w2.wait(20)
        elif a.scenario == "plain":
            w1 = spawn(bs, app_id, topic, rollups)
            t0 = time.time()
            for _ in range(40):
                time.sleep(1)
                print(round(time.time() - t0), asyncio.run(lag(bs, app_id, topic)), flush=True)
            w1.terminate()
            w1.wait(20)
            return
        elif a.scenario == "two":
            w1 = spawn(bs, app_id, topic, rollups, "--kill-after", str(int(a.traces * 0.3)), log_name=f"{app_id}-w1")
            w2 = spawn(bs, app_id, topic, rollups, log_name=f"{app_id}-w2")
            w1.wait(120)
            res["first_exit"] = w1.returncode
            res["drain_s"] = asyncio.run(wait_drained(bs, app_id, topic))
            time.sleep(1)
            w2.terminate()
            w2.wait(20)
        res.update(check_rollups(asyncio.run(read_all(bs, rollups)), want_d))
        res["changelog_records"] = len(asyncio.run(read_all(bs, f"{app_id}-sessions-changelog")))
        res.update(dump_and_compare(bs, app_id, topic, rollups, want_s))
        print(json.dumps(res))
    finally:
        broker.stop()


SENT = __import__("os").environ.get("SPIKE_SENTINEL", "1") == "1"


def recovery(bs, app_id, topic, rollups, keys):
    """Fill the table's changelog with ``keys`` session states, then time a worker's recovery."""
    async def fill():
        await create_topics(bs, [f"{app_id}-sessions-changelog"], P)
        prod = AIOKafkaProducer(bootstrap_servers=bs, linger_ms=5, max_batch_size=1 << 20)
        await prod.start()
        futs = []
        for i in range(keys):
            sid = f"session-r-{i}"
            st = SessionState(sid, f"user-{i % 2000}", "0", 1, 2, 6, 1000, 0, "x" * 250, "y" * 250, 10, 10,
                              trace_ids={"tr-%032x" % (i * 6 + j) for j in range(6)})
            futs.append(await prod.send(f"{app_id}-sessions-changelog", key=sid.encode(), value=_enc.encode(st),
                                        partition=i % P))
        await asyncio.gather(*futs)
        if SENT:
            for p in range(P):
                await prod.send_and_wait(f"{app_id}-sessions-changelog", key=b"\x00end", value=b"", partition=p)
        await prod.stop()
    asyncio.run(fill())
    out = []
    for _ in range(3):
        dump = HERE / "results" / f"dump-rec-{app_id}.json"
        dump.unlink(missing_ok=True)
        proc = spawn(bs, app_id, topic, rollups, "--dump", str(dump), log_name=f"{app_id}-rec")
        t0 = time.time()
        while not dump.exists() and time.time() - t0 < 300:
            time.sleep(0.1)
        proc.terminate()
        proc.wait(30)
        out.append(json.loads(dump.read_text()))
    print(json.dumps({"scenario": "recovery", "keys": keys, "runs": out}))


if __name__ == "__main__":
    main()
