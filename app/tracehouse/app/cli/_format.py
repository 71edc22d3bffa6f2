"""Render rows as a terminal table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from typing import Any

import orjson

FORMATS = ("table", "json", "csv")


def render(rows: Sequence[dict[str, Any]], fmt: str, title: str | None = None) -> None:
    """Write ``rows`` (dicts sharing keys) to stdout in ``fmt``."""
    if fmt == "json":
        sys.stdout.write(orjson.dumps(list(rows), option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
        return
    columns = list(rows[0]) if rows else []
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        sys.stdout.write(buf.getvalue())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    console = Console()
    console.print(table)
    if not rows:
        console.print("[dim]no results[/dim]")


def render_mapping(data: dict[str, Any], fmt: str, title: str | None = None) -> None:
    """A single record: key/value table, or the object itself as JSON/CSV."""
    if fmt == "table":
        render([{"field": k, "value": v} for k, v in data.items()], fmt, title)
    else:
        render([data], fmt, title)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
