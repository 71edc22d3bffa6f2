"""One definition per read operation: an operation defined in one place (its function and its SQL) is
served by its HTTP route, both clients (HTTP and in process) and the CLI, with nothing else to write."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from _serve import serving
from _workload import chat_workload, store_workload
from click.testing import CliRunner

from tracehouse.app.cli import main
from tracehouse.app.server import create_app
from tracehouse.query import Param, TraceClient, operations, read_operation, unregister
from tracehouse.schemas import TraceEvent
from tracehouse.storage import Store


@dataclass(frozen=True)
class StatusCounts:
    """How many traces have each status."""

    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StatusCounts:
        return cls(counts={str(k): int(v) for k, v in d["counts"].items()})


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"chdb://{tmp_path_factory.mktemp('ops') / 'chdb'}"
    store_workload(uri)
    return uri


@pytest.fixture
def status_counts() -> Iterator[None]:
    """The one place the new operation is defined: the function, its SQL and its parameters."""

    @read_operation("status_counts", "/api/tracehouse/v1/status-counts", cli="status-counts", result=StatusCounts)
    def count_by_status(
        store: Store,
        user_id: Annotated[str | None, Param("Only this user's traces.", wire="user", cli="user")] = None,
        experiment_ids: Annotated[Sequence[str] | None, Param("Experiments.", wire="experiment_id")] = None,
    ) -> StatusCounts:
        """Trace counts per status."""
        where: list[str] = ["1"]
        params: dict[str, Any] = {}
        if user_id is not None:
            where.append("user_id = {u:String}")
            params["u"] = user_id
        if experiment_ids:
            where.append("experiment_id IN {e:Array(String)}")
            params["e"] = list(experiment_ids)
        rows = store.query(f"SELECT state, count() FROM traces WHERE {' AND '.join(where)} GROUP BY state", params)
        return StatusCounts({str(s): int(n) for s, n in rows})

    try:
        yield
    finally:
        unregister("status_counts")
    assert "status_counts" not in {op.name for op in operations()}


def _expected(user: str | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in chat_workload():
        if isinstance(e, TraceEvent) and (user is None or e.metadata.get("mlflow.trace.user") == user):
            out[e.state] = out.get(e.state, 0) + 1
    return out


def test_an_operation_defined_once_is_served_everywhere(status_counts: None, store_uri: str, tmp_path: Path) -> None:
    want_all, want_user = _expected(), _expected("user-1")
    assert want_user
    assert want_user != want_all
    with Store(store_uri) as store:
        # the in-process client
        direct = TraceClient.from_store(store)
        assert direct.run("status_counts").counts == want_all
        assert direct.run("status_counts", user_id="user-1").counts == want_user
        with serving(store, create_app(store)) as url:
            # the HTTP route, with the wire name the parameter declares
            resp = httpx.get(f"{url}/api/tracehouse/v1/status-counts", params={"user": "user-1"})
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"counts": want_user}
            bad = httpx.get(f"{url}/api/tracehouse/v1/status-counts", params={"experiment_id": []})
            assert bad.status_code == 200
            # the HTTP client
            with TraceClient(url) as remote:
                assert remote.run("status_counts", user_id="user-1").counts == want_user
                assert remote.run("status_counts", experiment_ids=["no-such"]).counts == {}
    # the CLI (the store is closed: chDB allows one handle per path)
    result = CliRunner().invoke(main, ["status-counts", "--user", "user-1", "--uri", store_uri, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"counts": want_user}]
    assert "status-counts" in CliRunner().invoke(main, ["--help"]).output


def test_every_builtin_operation_has_a_route_a_client_call_and_a_command() -> None:
    names = {op.name: op for op in operations()}
    assert {"search", "trace", "users", "user", "sessions", "session"} <= set(names)
    for op in names.values():
        assert op.path.startswith("/api/tracehouse/v1/")
        assert op.cli in main.list_commands(None), op.name  # type: ignore[arg-type]
        assert op.summary
