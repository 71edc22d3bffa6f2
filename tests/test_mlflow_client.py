"""The real ``mlflow`` 3.17.2 client against a running tracehouse server: an app switches by setting
``MLFLOW_TRACKING_URI`` and nothing else. The app runs in its own process (tests/mlflow_app.py), in
sync and in async logging mode; every read is checked against what it logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _stack import serving_stack

from tracehouse.app.embedded import TansuBroker
from tracehouse.app.server import AuthConfig
from tracehouse.schemas import Topics
from tracehouse.storage import Store

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("mlflow_app.py")
TRACES = 520  # more than one 500-trace page, so max_results=1000 needs the server's page token
DATAFRAME_COLUMNS = {"trace_id", "trace", "client_request_id", "state", "request_time", "execution_duration",
                     "request", "response", "trace_metadata", "tags", "spans", "assessments"}  # fmt: skip


def run_app(url: str, cwd: Path, async_logging: bool, traces: int = TRACES, **env: str) -> dict[str, Any]:
    environ = {**os.environ, "MLFLOW_TRACKING_URI": url,
               "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "true" if async_logging else "false", **env}  # fmt: skip
    done = subprocess.run([sys.executable, str(APP), f"exp-{'async' if async_logging else 'sync'}", str(traces)],
                          cwd=cwd, env=environ, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def check_page(found: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """A search result holds exactly the expected traces, oldest first, each as it was logged."""
    assert {t["trace_id"] for t in found} == {e["trace_id"] for e in expected}
    assert len(found) == len(expected)
    stamps = [t["timestamp_ms"] for t in found]
    assert stamps == sorted(stamps)
    truth = {e["trace_id"]: e for e in expected}
    for t in found:
        e = truth[t["trace_id"]]
        assert (t["user"], t["session"], t["client_request_id"]) == (e["user"], e["session"], e["client_request_id"])
        assert t["tags"] == {"env": "prod", "turn": str(e["i"])}
        assert t["trace_name"] == "chat"
        assert [name for name, _, _ in t["spans"]] == ["chat", "llm", "retrieve"]
        statuses = {name: status for name, _, status in t["spans"]}
        assert t["state"].endswith("ERROR" if e["error"] else "OK")
        assert statuses["llm"].endswith("ERROR" if e["error"] else "OK")
        assert dict((n, k) for n, k, _ in t["spans"])["retrieve"] == "RETRIEVER"
        assert t["root_inputs"] == {"message": f"question {e['i']}", "i": e["i"]}


@pytest.mark.parametrize("async_logging", [False, True], ids=["sync", "async"])
def test_real_mlflow_client_logs_searches_and_annotates(
    broker: TansuBroker, store: Store, tmp_path: Path, async_logging: bool
) -> None:
    with serving_stack(broker, Topics(prefix=f"ml{int(async_logging)}."), store) as stack:
        out = run_app(stack.url, tmp_path, async_logging)

    logged = out["logged"]
    assert len(logged) == TRACES
    assert len({e["trace_id"] for e in logged}) == TRACES
    assert set(out["all"]) == {e["trace_id"] for e in logged}
    assert len(out["all"]) == TRACES

    user, session = logged[3]["user"], logged[3]["session"]
    check_page(out["by_user"], [e for e in logged if e["user"] == user])
    check_page(out["by_session"], [e for e in logged if e["session"] == session])
    check_page(out["combined"], [e for e in logged if e["user"] == user and e["session"] == session])
    assert out["by_session"]
    assert len(out["by_session"]) < len(out["by_user"])

    df = out["dataframe"]
    assert set(df["columns"]) >= DATAFRAME_COLUMNS
    assert df["trace_ids"] == [t["trace_id"] for t in out["by_user"]][:100]  # mlflow.search_traces pages at 100
    assert any(s.endswith("ERROR") for s in df["states"])

    failed = out["get_failed"]
    assert failed["state"].endswith("ERROR")
    assert failed["exception_events"] >= 1
    assert out["after_set_tag"]["tags"].get("reviewed") == "yes"
    assert "reviewed" not in out["after_delete_tag"]["tags"]
    assert ["thumbs", True, "HUMAN"] in out["after_feedback"]["assessments"]
    assert out["feedback_search"] == [logged[0]["trace_id"]]


def test_real_mlflow_client_with_a_token(broker: TansuBroker, store: Store, tmp_path: Path) -> None:
    auth = AuthConfig(token="s3cret")
    with serving_stack(broker, Topics(prefix="mlauth."), store, auth=auth) as stack:
        ok = run_app(stack.url, tmp_path, False, traces=12, MLFLOW_TRACKING_TOKEN="s3cret")
        basic = run_app(stack.url, tmp_path, False, traces=12, MLFLOW_TRACKING_USERNAME="anyone",
                        MLFLOW_TRACKING_PASSWORD="s3cret")  # fmt: skip
        environ = {**os.environ, "MLFLOW_TRACKING_URI": stack.url, "MLFLOW_TRACKING_TOKEN": "wrong",
                   "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # fmt: skip
        refused = subprocess.run([sys.executable, str(APP), "exp-denied", "1"], cwd=tmp_path, env=environ,
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
    assert len(ok["all"]) == 12
    assert len(basic["all"]) == 24  # the same experiment, twelve more traces
    assert refused.returncode != 0
    assert "UNAUTHENTICATED" in refused.stderr or "401" in refused.stderr
