"""No traced call pays the publisher's start-up: ``configure()`` imports aiokafka and asyncio and starts the
publisher thread; without ``configure()`` the first traced call starts the thread, which imports them
itself. Each case runs in a fresh interpreter, with an import hook that notes which thread imported what.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tracehouse.app.embedded import free_port

SPY = textwrap.dedent(
    """
    import sys, threading, time
    imports = []
    class Spy:
        def find_spec(self, name, path=None, target=None):
            imports.append((threading.current_thread().name, name))
            return None
    sys.meta_path.insert(0, Spy())

    def main_thread_imports(since=0):
        return [name for thread, name in imports[since:] if thread == "MainThread"]

    def wait_for(module):
        deadline = time.monotonic() + 60
        while module not in sys.modules and time.monotonic() < deadline:
            time.sleep(0.05)
        assert module in sys.modules, module
    """
)


def _run(body: str, bootstrap: str) -> None:
    code = SPY + textwrap.dedent(body) + "\nprint('ok')\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEHOUSE_")}
    env["TRACEHOUSE_KAFKA_BOOTSTRAP"] = bootstrap
    env["TRACEHOUSE_SHUTDOWN_TIMEOUT"] = "0.5"  # the broker is unreachable: do not wait at exit
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok"), done.stdout


def test_configure_does_the_start_up_so_traced_calls_import_and_start_nothing() -> None:
    _run(
        """
        import tracehouse

        @tracehouse.trace
        def traced(x):
            with tracehouse.start_span("child"):
                return x

        tracehouse.configure()
        assert {"asyncio", "aiokafka"} <= set(sys.modules)
        assert [t.name for t in threading.enumerate()] == ["MainThread", "tracehouse-publisher"]
        mark = len(imports)
        for i in range(3):
            assert traced(i) == i
        assert main_thread_imports(mark) == [], main_thread_imports(mark)
        assert threading.active_count() == 2
        """,
        f"127.0.0.1:{free_port()}",
    )


def test_without_configure_the_publisher_thread_does_its_own_imports() -> None:
    _run(
        """
        import tracehouse
        assert "asyncio" not in sys.modules and "aiokafka" not in sys.modules

        @tracehouse.trace
        def traced(x):
            return x

        assert traced(1) == 1
        assert [t.name for t in threading.enumerate()] == ["MainThread", "tracehouse-publisher"]
        wait_for("aiokafka")
        assert not [m for m in main_thread_imports() if m.split(".")[0] in ("asyncio", "aiokafka")], imports
        assert [t for t, n in imports if n == "aiokafka"] == ["tracehouse-publisher"]
        """,
        f"127.0.0.1:{free_port()}",
    )
