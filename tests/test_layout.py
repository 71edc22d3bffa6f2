"""The structure of the package: layers whose imports point down (the check bites), small modules, and a
wheel that holds everything an editable install would hide if it were missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("schemas", "producers", "storage", "processors", "query", "app")
MAX_MODULE_LINES = 500


def _copy_sources(dst: Path) -> None:
    for name in SOURCE_ROOTS:
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    shutil.copytree(ROOT / "scripts", dst / "scripts", ignore=shutil.ignore_patterns("__pycache__"))


def _check_contracts(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run scripts/import_contracts.py on the copy ``tree`` only: no site processing, so the editable
    install's paths (this checkout) are not on ``sys.path``; the copy's roots and the libraries are."""
    paths = [str(tree / name) for name in SOURCE_ROOTS] + [sysconfig.get_paths()["purelib"],
                                                         sysconfig.get_paths()["platlib"]]  # fmt: skip
    code = (
        "import os, sys; sys.path[:0] = sys.argv[1].split(os.pathsep); sys.argv = sys.argv[1:]; sys.argv[0] = 'x';"
        f"import runpy; runpy.run_path({str(tree / 'scripts' / 'import_contracts.py')!r}, run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-S", "-c", code, os.pathsep.join(paths), str(tree / "pyproject.toml")],
        capture_output=True, text=True, cwd=tree, timeout=120,
    )  # fmt: skip


def test_import_contracts_hold_on_this_tree(tmp_path: Path) -> None:
    _copy_sources(tmp_path)
    result = _check_contracts(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KEPT" in result.stdout
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("storage/tracehouse/storage/_rows.py", "from tracehouse.query import TraceReader", "storage is not"),
        ("schemas/tracehouse/schemas/keys.py", "import tracehouse.app.cli", "schemas is not"),
        ("producers/tracehouse/producers/_ids.py", "from tracehouse.gateway import Gateway", "producers is not"),
        ("query/tracehouse/query/_params.py", "import tracehouse.processors", "query is not"),
        ("processors/tracehouse/processors/_batch.py", "import tracehouse", "processors._batch -> tracehouse"),
    ],
    ids=["storage-up-to-query", "schemas-up-to-app", "sdk-to-gateway", "query-to-processors", "root-import"],
)
def test_the_contracts_fail_on_an_import_against_the_layers(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    _copy_sources(tmp_path)
    with (tmp_path / module).open("a") as f:
        f.write(f"\n\ndef _against_the_layers() -> None:\n    {line}  # noqa\n")
    result = _check_contracts(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    assert broken in result.stdout, result.stdout


def test_no_module_is_over_500_lines() -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for name in SOURCE_ROOTS
        for p in (ROOT / name).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    (built,) = out.glob("tracehouse-*.whl")
    return built


def test_the_wheel_holds_every_subpackage_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected_packages = {
        str(p.parent.relative_to(ROOT / root))
        for root in SOURCE_ROOTS
        for p in (ROOT / root).rglob("__init__.py")
    }
    assert {f"{pkg}/__init__.py" for pkg in expected_packages} <= names
    data = {
        str(p.relative_to(ROOT / root))
        for root in SOURCE_ROOTS
        for p in (ROOT / root / "tracehouse").rglob("*")
        if p.is_file() and p.suffix in (".json", ".html")
    }
    assert "tracehouse/app/server/_ui.html" in data
    assert {p for p in data if p.startswith("tracehouse/schemas/jsonschema/")}
    assert {p for p in data if p.startswith("tracehouse/schemas/examples/")}
    assert data <= names, sorted(data - names)


def test_the_wheel_installs_into_a_fresh_venv_and_runs(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv with only the wheel (its dependencies borrowed from this environment through a path
    entry, whose own .pth files, such as this checkout's editable install, are not processed)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run([python, "-c", "import tracehouse.app, tracehouse.storage; print(tracehouse.__path__)"],
                           capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert str(ROOT) not in where.stdout, where.stdout  # the wheel's files, not this checkout's
    result = subprocess.run([venv / "bin" / "tracehouse", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("up", "search", "users", "sessions", "sink", "sessionizer", "serve", "migrate"):
        assert command in result.stdout
    ui = subprocess.run(
        [python, "-c", "from importlib import resources; print(len(resources.files('tracehouse.app.server')"
         ".joinpath('_ui.html').read_text()))"], capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert int(ui.stdout) > 1000
