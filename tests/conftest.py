"""Shared fixtures: the real Tansu broker and a real chDB store, started and stopped by the tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracehouse.app.embedded import TansuBroker
from tracehouse.schemas import Topics
from tracehouse.storage import Store, migrate


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """One in-memory Kafka broker for the whole session; tests isolate themselves by topic prefix."""
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with TansuBroker(log_path=log) as b:
        yield b


@pytest.fixture
def topics() -> Topics:
    """Topics unique to one test, so tests never see each other's events."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"chdb://{tmp_path / 'chdb'}"


@pytest.fixture
def store(store_uri: str) -> Iterator[Store]:
    """A migrated chDB store in a fresh directory (chDB: one process per path)."""
    s = Store(store_uri)
    migrate(s)
    try:
        yield s
    finally:
        s.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="Run the fault suite's bigger repetitions (more traces, more kills).")  # fmt: skip


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    """``pytest --long``: the fault suite runs bigger repetitions."""
    return bool(request.config.getoption("--long"))
