"""Generate the JSON Schema files in ``jsonschema/`` from the msgspec contracts.

``python -m tracehouse.schemas._jsonschema`` rewrites them; a test checks they are current.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from .events import EVENT_TYPES, SCHEMA_VERSION

SCHEMA_DIR = Path(__file__).with_name("jsonschema")


def generate() -> dict[str, dict[str, Any]]:
    """Return ``{file name: JSON Schema}`` for every event type."""
    out: dict[str, dict[str, Any]] = {}
    for struct in EVENT_TYPES:
        tag = struct.__struct_config__.tag
        schema = msgspec.json.schema(struct)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://tracehouse.dev/schemas/v{SCHEMA_VERSION}/{tag}.json"
        out[f"{tag}.v{SCHEMA_VERSION}.json"] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    """The file text of a schema, byte-identical whichever msgspec version generated it: msgspec 0.23
    dedents docstring descriptions, 0.22 kept their indentation, so every description is cleaned here
    (``inspect.cleandoc`` is idempotent on already-clean text)."""
    return json.dumps(_clean_descriptions(schema), indent=2, sort_keys=True) + "\n"


def _clean_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _clean_descriptions(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in node]
    return node


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, schema in generate().items():
        (SCHEMA_DIR / name).write_text(render(schema))


if __name__ == "__main__":
    main()
