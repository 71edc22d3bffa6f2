"""faust app factory for the spike. No import-time side effects: nothing is created until create_app().

Modes:
  decode       decode envelopes with a msgspec Struct only
  table        + per-session state in a faust Table, one __setitem__ per session per envelope
  dict         + state in a dict owned by the agent; dirty sessions sent to the Table changelog
               every K ms from a timer; events acked only after their state was sent (noack stream)
  dict_rollup  dict + user-rollup deltas, one message per target partition per envelope
  dict_rollup1 dict + user-rollup deltas, one message per delta
Run as a worker subprocess:  python app.py --mode dict --bootstrap 127.0.0.1:9092 ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

T_START = time.perf_counter()
SENTINEL = os.environ.get('SPIKE_SENTINEL', '1') == '1'
SENTINEL_KEY = b'\x00end'

# ----------------------------------------------------------------------------- wire + pure logic

class TraceLite(msgspec.Struct, tag_field="type", tag="trace"):
    """Only what the sessionizer/rollups need; spans/tags are skipped by msgspec without building objects."""
    trace_id: str
    timestamp_ms: int
    execution_time_ms: int
    state: str
    experiment_id: str = "0"
    metadata: dict[str, str] = {}
    request_preview: str = ""
    response_preview: str = ""


_lines_decoder = msgspec.json.Decoder(TraceLite)


def decode_envelope(value: bytes) -> list[TraceLite]:
    try:
        return _lines_decoder.decode_lines(value)
    except msgspec.DecodeError:  # fall back line by line; bad lines would go to the DLQ
        out = []
        for line in value.split(b"\n"):
            if line.strip():
                try:
                    out.append(_lines_decoder.decode(line))
                except msgspec.DecodeError:
                    pass
        return out


class SessionState(msgspec.Struct, array_like=True):
    session_id: str
    user_id: str
    experiment_id: str
    first_ms: int
    last_ms: int
    turns: int = 0
    total_ms: int = 0
    errors: int = 0
    first_request: str = ""
    last_response: str = ""
    in_tokens: int = 0
    out_tokens: int = 0
    status: str = "open"
    trace_ids: set[str] = set()


_enc = msgspec.msgpack.Encoder()
_dec_state = msgspec.msgpack.Decoder(SessionState)
_tok_dec = msgspec.json.Decoder(dict[str, int])
PREVIEW = 250


def apply_trace(st: SessionState | None, sid: str, t: TraceLite) -> tuple[SessionState, bool]:
    """Pure: fold one trace into the session state. Returns (state, is_new_trace)."""
    md = t.metadata
    if st is None:
        st = SessionState(sid, md.get("mlflow.trace.user", ""), t.experiment_id, t.timestamp_ms, t.timestamp_ms,
                          trace_ids=set())
    elif t.trace_id in st.trace_ids:
        return st, False
    st.trace_ids.add(t.trace_id)
    st.turns += 1
    st.total_ms += t.execution_time_ms
    if t.state == "ERROR":
        st.errors += 1
    if t.timestamp_ms <= st.first_ms or st.turns == 1:
        st.first_ms = t.timestamp_ms
        st.first_request = t.request_preview[:PREVIEW]
    if t.timestamp_ms >= st.last_ms:
        st.last_ms = t.timestamp_ms
        st.last_response = t.response_preview[:PREVIEW]
    tok = md.get("mlflow.trace.tokenUsage")
    if tok:
        try:
            d = _tok_dec.decode(tok)
            st.in_tokens += d.get("input_tokens", 0)
            st.out_tokens += d.get("output_tokens", 0)
        except msgspec.DecodeError:
            pass
    return st, True


class UserDelta(msgspec.Struct, array_like=True):
    """Mergeable per (user, day) delta; sums/min/max merge exactly, sessions as an exact set."""
    user_id: str
    day: int
    traces: int = 0
    errors: int = 0
    sum_ms: int = 0
    first_ms: int = 2**62
    last_ms: int = 0
    tokens: int = 0
    sessions: set[str] = set()
    durations: list[int] = []  # raw samples -> quantile state at the sink


def add_delta(deltas: dict, t: TraceLite, sid: str) -> None:
    uid = t.metadata.get("mlflow.trace.user", "")
    day = t.timestamp_ms // 86_400_000
    d = deltas.get((uid, day))
    if d is None:
        d = deltas[(uid, day)] = UserDelta(uid, day, sessions=set(), durations=[])
    d.traces += 1
    d.errors += t.state == "ERROR"
    d.sum_ms += t.execution_time_ms
    d.first_ms = min(d.first_ms, t.timestamp_ms)
    d.last_ms = max(d.last_ms, t.timestamp_ms)
    d.sessions.add(sid)
    d.durations.append(t.execution_time_ms)


def session_of(t: TraceLite) -> str:
    md = t.metadata
    return md.get("mlflow.trace.session") or md.get("session.id") or t.trace_id


# ----------------------------------------------------------------------------- typed config + factory

@dataclass(frozen=True, slots=True)
class SpikeConfig:
    bootstrap: str
    app_id: str
    traces_topic: str
    rollups_topic: str
    partitions: int = 8
    datadir: str = "/tmp/faustspike/data"
    mode: str = "decode"
    flush_ms: int = 200
    expect: int = 0
    result_path: str = ""
    commit_interval_s: float = 1.0
    kill_after: int = 0
    dump_path: str = ""
    dump_state: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def create_app(cfg: SpikeConfig):
    import faust
    from aiokafka.partitioner import murmur2

    app = faust.App(
        cfg.app_id,
        broker=f"kafka://{cfg.bootstrap}",
        autodiscover=False,
        web_enabled=False,              # no aiohttp server / port
        datadir=cfg.datadir,            # per app id: <datadir>/<app_id>-data/
        store="memory://",
        topic_partitions=cfg.partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        table_standby_replicas=0,
        broker_commit_interval=cfg.commit_interval_s,
        broker_commit_every=10_000,
        broker_max_poll_records=500,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=4096,
        stream_wait_empty=False,
        producer_linger_ms=5,
        producer_max_batch_size=1 << 20,
        producer_max_request_size=16 << 20,
        producer_acks=1,
        processing_guarantee="at_least_once",
        broker_session_timeout=6.0,     # Tansu: a fresh group's first join waits session_timeout/2
        broker_heartbeat_interval=1.0,
        key_serializer="raw",
        value_serializer="raw",
        **cfg.extra,
    )
    traces = app.topic(cfg.traces_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", partitions=cfg.partitions, internal=False)
    rollups = app.topic(cfg.rollups_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                        value_serializer="raw", partitions=cfg.partitions, internal=False)
    table = None if cfg.mode == "decode" else app.Table(
        "sessions", default=None, partitions=cfg.partitions, key_type=bytes, value_type=bytes)
    stats = {"traces": 0, "new": 0, "t0": None, "c0": None, "sets": 0, "set_s": 0.0, "envs": 0, "sessions_w": 0,
             "flushes": 0, "flushed_keys": 0, "flush_s": 0.0, "rollup_msgs": 0, "done": False}
    mode = cfg.mode

    def finish_if_done() -> None:
        if stats["traces"] >= cfg.expect and not stats["done"]:
            stats["done"] = True
            wall = time.perf_counter() - stats["t0"]
            cpu = time.process_time() - stats["c0"]
            res = {k: v for k, v in stats.items() if k not in ("t0", "c0", "done")}
            res.update(mode=mode, wall_s=wall, cpu_s=cpu, traces_per_s=stats["traces"] / wall,
                       set_us=(stats["set_s"] / stats["sets"] * 1e6) if stats["sets"] else None)
            if cfg.result_path:
                Path(cfg.result_path + ".tmp").write_text(json.dumps(res))
                os.replace(cfg.result_path + ".tmp", cfg.result_path)

    def start_clock() -> None:
        if stats["t0"] is None:
            stats["t0"] = time.perf_counter()
            stats["c0"] = time.process_time()

    if mode == "decode":
        async def agent(stream):
            async for value in stream:
                start_clock()
                evs = decode_envelope(value)
                stats["traces"] += len(evs)
                stats["envs"] += 1
                finish_if_done()
        app.agent(traces, name="decode")(agent)

    elif mode == "table":
        async def agent(stream):
            async for value in stream:
                start_clock()
                evs = decode_envelope(value)
                touched: dict[str, SessionState] = {}
                for t in evs:
                    sid = session_of(t)
                    st = touched.get(sid)
                    if st is None:
                        raw = table.get(sid.encode())
                        st = _dec_state.decode(raw) if raw is not None else None
                    st, new = apply_trace(st, sid, t)
                    touched[sid] = st
                    stats["new"] += new
                t1 = time.perf_counter()
                for sid, st in touched.items():
                    table[sid.encode()] = _enc.encode(st)
                stats["set_s"] += time.perf_counter() - t1
                stats["sets"] += len(touched)
                stats["traces"] += len(evs)
                stats["envs"] += 1
                finish_if_done()
        app.agent(traces, name="sess_table")(agent)

    else:  # dict modes (v2): state in agent dicts; flush every K ms sends deltas, waits, then changelog
        state: dict[int, dict[str, SessionState]] = defaultdict(dict)
        dirty: dict[int, set[str]] = defaultdict(set)
        pending: list = []           # events not yet acked (their state is not yet in the changelog)
        dpend: list = []             # rollup messages (target partition, key, value, headers)
        rollup_mode = mode.removeprefix("dict")
        nparts = cfg.partitions
        ucache: dict[bytes, int] = {}

        def upart(uk: bytes) -> int:
            p = ucache.get(uk)
            if p is None:
                p = ucache[uk] = (murmur2(uk) & 0x7FFFFFFF) % nparts
            return p

        async def flush() -> None:
            if not pending:
                return
            t1 = time.perf_counter()
            snap_pending = pending[:]
            pending.clear()
            snap_deltas = dpend[:]
            dpend.clear()
            items = [(p, sid.encode(), _enc.encode(state[p][sid])) for p, sids in dirty.items() for sid in sids]
            dirty.clear()
            prod = app.producer
            if snap_deltas:
                for tp, key, value, hdr in snap_deltas:
                    await prod.send(cfg.rollups_topic, key, value, tp, None, hdr)
                await prod.flush()   # deltas durable before the state that suppresses their replay
            cl = table.changelog_topic.get_topic_name()
            parts = set()
            for p, k, v in items:
                table.data[k] = v
                await prod.send(cl, k, v, p, None, None)
                parts.add(p)
            if SENTINEL and parts:
                # Tansu reports a partition's end offset as (base offset of its last batch) + 1, so faust's
                # recovery stops short of a multi-record last batch. A lone record after every flush makes
                # the reported end cover everything that was flushed.
                await prod.flush()
                for p in parts:
                    await prod.send(cl, SENTINEL_KEY, b"", p, None, None)
            # (session records: one NDJSON message per partition to sessions.v1 would go here)
            for ev in snap_pending:   # committable only now; the commit flushes the producer first
                ev.ack()
            stats["flushes"] += 1
            stats["flushed_keys"] += len(items)
            stats["flush_s"] += time.perf_counter() - t1

        async def agent(stream):
            async for ev in stream.noack().events():
                start_clock()
                p = ev.message.partition
                evs = decode_envelope(ev.value)
                st_p = state[p]
                d_p = dirty[p]
                deltas: dict | None = {} if rollup_mode else None
                for t in evs:
                    sid = session_of(t)
                    st = st_p.get(sid)
                    if st is None:
                        raw = table.data.get(sid.encode())  # restored from the changelog
                        st = _dec_state.decode(raw) if raw is not None else None
                    st, new = apply_trace(st, sid, t)
                    st_p[sid] = st
                    if new:
                        d_p.add(sid)
                        stats["new"] += 1
                        if deltas is not None:
                            add_delta(deltas, t, sid)
                if deltas:
                    hdr = [("th-src", f"{p}:{ev.message.offset}".encode())]
                    if rollup_mode == "_rollup":   # one message per target partition per envelope
                        by_part: dict[int, list[bytes]] = defaultdict(list)
                        for d in deltas.values():
                            by_part[upart(d.user_id.encode())].append(msgspec.json.encode(d))
                        for tp, lines in by_part.items():
                            dpend.append((tp, None, b"\n".join(lines), hdr))
                        stats["rollup_msgs"] += len(by_part)
                    else:                          # one message per delta
                        for d in deltas.values():
                            uk = d.user_id.encode()
                            dpend.append((upart(uk), uk, msgspec.json.encode(d), hdr))
                        stats["rollup_msgs"] += len(deltas)
                pending.append(ev)
                stats["traces"] += len(evs)
                stats["envs"] += 1
                finish_if_done()
                if cfg.kill_after and stats["traces"] >= cfg.kill_after:
                    os.kill(os.getpid(), 9)
        app.agent(traces, name="sess_dict")(agent)
        app.timer(interval=cfg.flush_ms / 1000.0, name="flush")(flush)

        @app.on_partitions_revoked.connect
        async def on_revoked(sender, revoked, **kw) -> None:
            # drop (never flush) state of partitions we no longer own: the next owner replays from the
            # committed offset, which never passes unflushed state
            for tp in revoked:
                state.pop(tp.partition, None)
                dirty.pop(tp.partition, None)
            pending[:] = [e for e in pending if e.message.tp not in revoked]

    if cfg.dump_path:
        marks: dict[str, float] = {}

        @app.on_partitions_assigned.connect
        async def on_assigned(sender, assigned, **kw) -> None:
            marks["assigned"] = time.perf_counter()

        @app.on_rebalance_complete.connect
        async def on_ready(sender, **kw) -> None:
            rec = time.perf_counter() - marks.get("assigned", time.perf_counter())
            data = {k.decode(): v for k, v in table.data.items() if k != SENTINEL_KEY}
            out = {"recovery_s": rec, "keys": len(data), "since_start_s": time.perf_counter() - T_START}
            if cfg.dump_state:
                out["state"] = {k: msgspec.to_builtins(_dec_state.decode(v)) for k, v in data.items()}
            Path(cfg.dump_path).write_text(json.dumps(out))

    app.spike_stats = stats
    app.spike_table = table
    return app


# ----------------------------------------------------------------------------- subprocess worker

def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--traces-topic", required=True)
    p.add_argument("--rollups-topic", required=True)
    p.add_argument("--mode", default="decode")
    p.add_argument("--flush-ms", type=int, default=200)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--result", default="")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--datadir", default="/tmp/faustspike/data")
    p.add_argument("--loglevel", default="WARNING")
    p.add_argument("--kill-after", type=int, default=0)
    p.add_argument("--dump", default="")
    p.add_argument("--dump-state", action="store_true")
    p.add_argument("--conf", default="{}", help="JSON of extra faust settings")
    a = p.parse_args()
    cfg = SpikeConfig(bootstrap=a.bootstrap, app_id=a.app_id, traces_topic=a.traces_topic,
                      rollups_topic=a.rollups_topic, mode=a.mode, flush_ms=a.flush_ms, expect=a.expect,
                      result_path=a.result, partitions=a.partitions, datadir=a.datadir,
                      extra=json.loads(a.conf), kill_after=a.kill_after, dump_path=a.dump,
                      dump_state=a.dump_state)
    import logging
    logging.basicConfig(level=a.loglevel, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(cfg)
    import faust
    worker = faust.Worker(app, loglevel=a.loglevel, quiet=True, redirect_stdouts=False,
                          override_logging=False, console_port=0)
    worker.execute_from_commandline()


if __name__ == "__main__":
    sys.exit(main())
