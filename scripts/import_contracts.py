"""Check tracehouse's import contracts across every source root: ``[tool.importlinter]`` in
pyproject.toml (the layers, no cycles), and that no module inside the package imports its root.

import-linter builds its graph with grimp, which reads a package's directories from its import spec.
``tracehouse`` is one package spread over several source roots, and its root ``__init__`` extends the
spec to all of them only once it is imported; so this imports it first. Arguments go to
``lint-imports`` (e.g. another config file, ``--verbose``). Exits non-zero when a contract is broken.
"""

from __future__ import annotations

import sys

import grimp
from importlinter.cli import lint_imports

import tracehouse  # noqa: F401  (every source root joins the package's path here)


def root_importers() -> list[str]:
    """Modules of the package that import the root ``tracehouse`` module itself (which only hands
    names on: importing it from inside would tie every layer to the SDK and the lazy query client)."""
    graph = grimp.build_graph("tracehouse", cache_dir=None)
    return sorted(graph.find_modules_that_directly_import("tracehouse"))


def main(argv: list[str]) -> int:
    files = tuple(a for a in argv if not a.startswith("-"))
    code = lint_imports(config_filenames=files, no_cache=True, no_logo=True, verbose="--verbose" in argv)
    importers = root_importers()
    print("Nothing inside the package imports its root:", "BROKEN" if importers else "KEPT")
    for module in importers:
        print(f"- {module} -> tracehouse")
    return 1 if code or importers else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
