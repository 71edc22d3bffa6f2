"""The embedded broker dies with the process that started it, and a broker left behind is named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tracehouse.app.embedded import BrokerError, TansuBroker, free_port
from tracehouse.app.embedded._tansu import listener_pid

pytestmark = pytest.mark.integration


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":  # a zombie waiting for init: it is dead
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_a_sigkilled_parent_takes_its_broker_along() -> None:
    port = free_port()
    code = f"from tracehouse.app.embedded import TansuBroker; b = TansuBroker(port={port}).start(); " \
           "print(b.pid, flush=True); import time; time.sleep(120)"  # fmt: skip
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    broker = int(parent.stdout.readline())
    assert listener_pid(port) == broker
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    try:
        assert _gone(broker, 15), "the broker outlived the SIGKILLed process that started it"
    finally:
        if not _gone(broker, 0):
            os.kill(broker, signal.SIGKILL)


def test_a_broker_left_on_the_port_is_named() -> None:
    with TansuBroker() as first:
        named = rf"in use by tansu \(pid {first.pid}\); stop it \(kill {first.pid}\)"
        with pytest.raises(BrokerError, match=named):
            TansuBroker(port=first.port).start()
