"""deploy/ cannot be run here (no Docker engine), so check that it only uses what exists."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tracehouse.app.cli import main
from tracehouse.storage._store import _client_kwargs

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
TRACEHOUSE_SERVICES = {n: s for n, s in SERVICES.items() if "build" in s}


def _tracehouse_invocations(service: dict[str, Any]) -> list[list[str]]:
    """The `tracehouse ...` argument lists a service runs."""
    if "entrypoint" in service and service["entrypoint"][:2] == ["sh", "-c"]:
        script = service["entrypoint"][2]
        return [shlex.split(part)[1:] for part in script.split("&&") if part.strip().startswith("tracehouse")]
    return [list(service.get("command", []))]


def test_compose_has_every_role() -> None:
    assert {"kafka", "clickhouse", "init", "sink", "sessionizer", "api"} <= set(SERVICES)
    assert set(TRACEHOUSE_SERVICES) == {"init", "sink", "sessionizer", "api"}


@pytest.mark.parametrize("name", sorted(TRACEHOUSE_SERVICES))
def test_service_commands_exist_and_parse(name: str) -> None:
    for argv in _tracehouse_invocations(TRACEHOUSE_SERVICES[name]):
        assert argv, f"{name}: no tracehouse command"
        assert argv[0] in main.commands, f"{name}: unknown tracehouse command {argv}"
        result = CliRunner().invoke(main, [*argv, "--help"])
        assert result.exit_code == 0, f"{name}: {argv} does not parse: {result.output}"


def test_environment_variables_are_read_by_the_code() -> None:
    env = TRACEHOUSE_SERVICES["sink"]["environment"]
    sources = "\n".join(p.read_text() for root in ("schemas", "producers", "storage", "processors", "query", "app")
                        for p in (ROOT / root).rglob("*.py"))  # fmt: skip
    for var in env:
        assert var in sources, f"{var} is set in compose.yaml but read nowhere"


def test_store_uri_points_at_the_clickhouse_service() -> None:
    env = TRACEHOUSE_SERVICES["sink"]["environment"]
    kwargs, database = _client_kwargs(env["TRACEHOUSE_STORE_URI"])
    ch = SERVICES["clickhouse"]["environment"]
    assert kwargs["host"] == "clickhouse"
    assert kwargs["port"] == 8123
    assert database == ch["CLICKHOUSE_DB"]
    assert (kwargs["username"], kwargs["password"]) == (ch["CLICKHOUSE_USER"], ch["CLICKHOUSE_PASSWORD"])
    assert env["TRACEHOUSE_KAFKA_BOOTSTRAP"].split(":")[0] == "kafka"


def test_dockerfile_copies_real_paths_and_installs_a_real_extra() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.findall(r"'\.\[(\w+)\]'", dockerfile)
    assert extras
    assert all(e in project["optional-dependencies"] for e in extras)
    assert '"tracehouse"' in dockerfile
    assert "tracehouse" in project["scripts"]
