"""Example payloads shipped with the contracts and reused as test fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXAMPLES_DIR = Path(__file__).with_name("examples")


def example(name: str) -> bytes:
    """The raw bytes of ``examples/<name>.json`` (compacted to one line, as on the wire)."""
    return json.dumps(json.loads((EXAMPLES_DIR / f"{name}.json").read_text()), separators=(",", ":")).encode()


def invalid_examples() -> list[dict[str, Any]]:
    """Lines that must be rejected, each with ``why`` it is invalid."""
    out: list[dict[str, Any]] = json.loads((EXAMPLES_DIR / "invalid.json").read_text())
    return out
