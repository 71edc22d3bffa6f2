"""Run the processors as the separate processes an operator runs (``python -m ...``), and stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def sessionizer_command(bootstrap: str, prefix: str, app_id: str, partitions: int, datadir: Path,
                        flush_interval_ms: int = 200) -> list[str]:  # fmt: skip
    return [sys.executable, "-m", "tracehouse.processors.sessions", "--bootstrap", bootstrap,
            "--topic-prefix", prefix, "--app-id", app_id, "--partitions", str(partitions),
            "--flush-interval-ms", str(flush_interval_ms), "--datadir", str(datadir), "--loglevel", "INFO"]  # fmt: skip


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30, sig: int = signal.SIGTERM) -> None:
    """Stop a process that still runs: ``sig`` first, SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
