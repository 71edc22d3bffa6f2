"""One settings module: every environment variable declared once, read through one helper, documented
in a generated reference; one error hierarchy."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import tracehouse
import tracehouse.query
from tracehouse.schemas import errors, settings

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("schemas", "producers", "storage", "processors", "query", "app")
SETTINGS_MODULE = ROOT / "schemas" / "tracehouse" / "schemas" / "settings.py"
#: The one other module that touches os.environ: it hands the environment on to the broker it starts.
PASSES_ENVIRONMENT_ON = ROOT / "app" / "tracehouse" / "app" / "embedded" / "_tansu.py"


def _sources() -> list[Path]:
    return [p for root in SOURCE_ROOTS for p in (ROOT / root).rglob("*.py")]


def test_every_variable_the_code_names_is_declared() -> None:
    named = {
        (str(p.relative_to(ROOT)), m)
        for p in _sources()
        for m in re.findall(r"TRACEHOUSE_[A-Z0-9_]+", p.read_text())
    }
    undeclared = sorted((where, var) for where, var in named if not settings.declared(var))
    assert not undeclared, f"read but not declared in tracehouse.schemas.settings: {undeclared}"


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that read the process environment: os.environ / os.getenv / os.environ.get(...)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb") and (
            isinstance(node.value, ast.Name) and node.value.id == "os"
        ):
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "os" and any(
            a.name in ("environ", "getenv") for a in node.names
        ):
            lines.append(node.lineno)
    return lines


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = {
        str(p.relative_to(ROOT)): lines
        for p in _sources()
        if p not in (SETTINGS_MODULE, PASSES_ENVIRONMENT_ON) and (lines := _environment_reads(ast.parse(p.read_text())))
    }
    assert not readers, f"read the environment outside tracehouse.schemas.settings: {readers}"
    # the broker launcher only copies the environment for its child (and sets the child's RUST_LOG)
    tansu = PASSES_ENVIRONMENT_ON.read_text()
    assert "TRACEHOUSE_" not in "".join(line for line in tansu.splitlines() if "os.environ" in line)


def test_the_check_catches_an_undeclared_variable(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("import os\nURL = os.environ.get('TRACEHOUSE_SNEAKY_URL')\n")
    assert _environment_reads(ast.parse(sneaky.read_text())) == [2]
    assert not settings.declared("TRACEHOUSE_SNEAKY_URL")


def test_the_configuration_reference_is_generated_from_the_settings() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text == settings.reference(), "regenerate it: scripts/generate"
    for s in settings.all_settings():
        assert f"`{s.env}`" in text


def test_precedence_is_argument_then_environment_then_default() -> None:
    s = settings.KAFKA_BOOTSTRAP
    assert s.read(None, env={}) == "localhost:9092"
    assert s.read(None, env={s.env: "k:1"}) == "k:1"
    assert s.read(None, env={s.env: ""}) == "localhost:9092"  # empty counts as unset
    assert s.read("x:2", env={s.env: "k:1"}) == "x:2"
    timeout = settings.READ_YOUR_WRITES_TIMEOUT_S
    with pytest.raises(errors.ConfigurationError, match="TRACEHOUSE_READ_YOUR_WRITES_TIMEOUT_S"):
        timeout.read(None, env={timeout.env: "soon"})
    assert timeout.read(None, env={timeout.env: "soon"}, strict=False) == timeout.default


def test_secrets_are_masked() -> None:
    token = settings.AUTH_TOKEN
    assert token.secret
    assert token.shown("hunter2") == "***"
    with pytest.raises(errors.ConfigurationError) as err:
        settings.BUFFER_SIZE.read(None, env={settings.BUFFER_SIZE.env: "lots"})
    assert "lots" in str(err.value)


def test_one_error_hierarchy_rooted_at_tracehouse_error() -> None:
    assert tracehouse.TracehouseError is errors.TracehouseError
    assert tracehouse.ImmutableMetadataError is tracehouse.query.ImmutableMetadataError is errors.ImmutableMetadataError
    assert issubclass(errors.ImmutableMetadataError, ValueError)
    assert issubclass(errors.ImmutableMetadataError, TypeError)
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type):
            assert issubclass(cls, errors.TracehouseError), name
            assert cls.__doc__, f"{name} has no docstring"
            assert 400 <= cls.http_status <= 599
    for module in (tracehouse.query,):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, Exception):
                assert issubclass(obj, errors.TracehouseError), name


def test_errors_answer_in_mlflow_shape() -> None:
    err = errors.NotFound("Trace with ID 'tr-x' not found")
    assert (err.http_status, err.error_code) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert err.to_dict() == {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Trace with ID 'tr-x' not found"}
    coded = errors.InvalidRequest("too big", status=413)
    assert (coded.status, coded.error_code) == (413, "INVALID_PARAMETER_VALUE")
    assert errors.RemoteError(503, "TEMPORARILY_UNAVAILABLE", "later").status == 503
