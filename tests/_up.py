"""`tracehouse up` as a process for the recovery tests: start it on a data directory, publish traces to
its broker, wait until its API shows them, stop it gracefully or SIGKILL its whole process group."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from tracehouse.app.embedded import free_port
from tracehouse.schemas import TraceEvent, encode_event
from tracehouse.schemas.kafka import pack, partition_for, partition_key

PARTITIONS = 4


def wait_for(check: Callable[[], bool], timeout: float, what: str, context: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until it holds; on timeout fail with ``what`` and, if given, ``context()`` (a log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{context()}" if context else ""))


@dataclass
class Up:
    """One `tracehouse up` process on ``data_dir`` (ports kept across restarts)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    kafka_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    topic_traces = "tracehouse.traces.v1"

    def start(self) -> None:
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracehouse.app", "up", "--port", str(self.port), "--kafka-port",
             str(self.kafka_port), "--data-dir", str(self.data_dir), "--partitions", str(PARTITIONS), *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        proc = self.proc
        threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
        wait_for(lambda: any("tracehouse is up" in ln for ln in self.lines) or proc.poll() is not None, 120,
                 "the ready banner")  # fmt: skip
        assert proc.poll() is None, self.log()

    def log(self) -> str:
        return "\n".join(self.lines[-200:])

    def stop(self) -> None:
        """Ctrl-C: drain, then stop."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(180)
        assert self.proc.returncode == 0, self.log()

    def kill(self) -> None:
        """SIGKILL the whole process group (up, its broker, everything it started)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stored_ids(self) -> set[str]:
        """Every trace id the running `up` serves (empty while it cannot answer)."""
        ids: set[str] = set()
        token = None
        while True:
            body = {"max_results": 500, "include_spans": False, **({"page_token": token} if token else {})}
            try:
                response = httpx.post(self.url + "/api/tracehouse/v1/traces/search", json=body, timeout=30)
            except httpx.HTTPError:
                return set()
            if response.status_code != 200:
                return set()
            page = response.json()
            ids |= {t.get("info", t)["trace_id"] for t in page.get("traces") or []}
            token = page.get("next_page_token")
            if not token:
                return ids


async def publish_async(bootstrap: str, topic: str, events: list[TraceEvent]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2 << 20)
    await producer.start()
    try:
        lines = [(partition_for(partition_key(e).encode(), range(PARTITIONS)), None, encode_event(e)) for e in events]
        futures = [await producer.send(topic, env.value, partition=env.partition, headers=env.headers())
                   for env in pack(lines, max_lines=20)]  # fmt: skip
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def publish(bootstrap: str, events: list[TraceEvent], prefix: str = "tracehouse.") -> None:
    asyncio.run(publish_async(bootstrap, f"{prefix}traces.v1", events))


class Conversations:
    """Turns of a fixed set of sessions and users, in event time ``base_ms`` onwards, round by round."""

    def __init__(self, sessions: int = 36, users: int = 12, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.sessions = [(f"sess-{i:03d}", f"user-{i % users:02d}") for i in range(sessions)]
        self.n = 0

    def round(self, base_ms: int, which: list[int] | None = None,
              turns: tuple[int, int] = (1, 4)) -> list[TraceEvent]:  # fmt: skip
        out = []
        for i in which if which is not None else range(len(self.sessions)):
            sid, user = self.sessions[i]
            t = base_ms + self.rng.randrange(60_000)
            for _ in range(self.rng.randint(*turns)):
                self.n += 1
                state: Literal["OK", "ERROR"] = "ERROR" if self.rng.random() < 0.2 else "OK"
                out.append(TraceEvent(
                    trace_id=f"tr-{self.rng.getrandbits(128):032x}", timestamp_ms=t,
                    execution_time_ms=self.rng.randint(10, 3000), state=state, request_preview=f"q{self.n}",
                    response_preview=f"a{self.n}",
                    metadata={"mlflow.trace.user": user, "mlflow.trace.session": sid},
                ))  # fmt: skip
                t += self.rng.randint(1_000, 120_000)
        return out
