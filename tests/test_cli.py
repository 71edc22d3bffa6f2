"""The `tracehouse` CLI against a real chDB store (--uri chdb://...)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from _workload import chat_workload, store_workload
from click.testing import CliRunner

from tracehouse.app.cli import main
from tracehouse.schemas import TraceEvent
from tracehouse.storage import latest_version


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"chdb://{tmp_path_factory.mktemp('cli') / 'chdb'}"
    store_workload(uri)
    return uri


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", [[], *([c] for c in sorted(main.commands))], ids=lambda c: " ".join(c) or "-")
def test_every_command_has_help(command: list[str]) -> None:
    out = _run(*command, "--help")
    assert "usage:" in out.lower()
    assert "--help" in out


def test_search_json_matches_the_workload(store_uri: str) -> None:
    events = [e for e in chat_workload() if isinstance(e, TraceEvent)]
    out = _run("search", "metadata.`mlflow.trace.user` = 'user-3'", "--order-by", "timestamp ASC",
               "--max-results", "1000", "--format", "json", "--uri", store_uri)  # fmt: skip
    rows = json.loads(out)
    expected = sorted((e for e in events if e.metadata["mlflow.trace.user"] == "user-3"), key=lambda e: e.timestamp_ms)
    assert [r["trace_id"] for r in rows] == [e.trace_id for e in expected]
    assert {r["user"] for r in rows} == {"user-3"}


def test_search_csv_and_table(store_uri: str) -> None:
    out = _run("search", "status = 'ERROR'", "--format", "csv", "--uri", store_uri)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows
    assert {r["status"] for r in rows} == {"ERROR"}
    table = _run("search", "--max-results", "3", "--uri", store_uri)
    assert "3 traces" in table


def test_bad_filter_is_a_clear_error(store_uri: str) -> None:
    result = CliRunner().invoke(main, ["search", "foo.bar = 'x'", "--uri", store_uri])
    assert result.exit_code != 0
    assert "Invalid entity type 'foo'" in result.output


def test_user_and_session_views(store_uri: str) -> None:
    events = [e for e in chat_workload() if isinstance(e, TraceEvent)]
    summary = json.loads(_run("user", "user-0", "--format", "json", "--uri", store_uri))[0]
    mine = [e for e in events if e.metadata["mlflow.trace.user"] == "user-0"]
    assert summary["total_traces"] == len(mine)
    assert summary["unique_sessions"] == len({e.metadata["mlflow.trace.session"] for e in mine})
    turns = json.loads(_run("session", "session-004", "--format", "json", "--uri", store_uri))
    session = sorted((e for e in events if e.metadata["mlflow.trace.session"] == "session-004"),
                     key=lambda e: e.timestamp_ms)  # fmt: skip
    assert [t["trace_id"] for t in turns] == [e.trace_id for e in session]
    assert [t["turn"] for t in turns] == list(range(1, len(session) + 1))


def test_migrate_is_idempotent(tmp_path: Path) -> None:
    uri = f"chdb://{tmp_path / 'm'}"
    first = _run("migrate", "--store", uri)
    assert "applied 0001" in first
    second = _run("migrate", "--store", uri)
    assert "applied" not in second
    assert f"schema version {latest_version()}" in second
