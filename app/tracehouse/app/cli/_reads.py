"""The query commands, derived from the read operations: one command per operation with a ``cli`` name.

A command's arguments and options come from the operation's parameters (path parameters and
``argument`` parameters are positional; a parameter whose ``cli`` name is empty is left out), plus
``--format`` and ``--uri``. It runs the operation through :class:`~tracehouse.query.TraceClient`
(a server's route, or the store in process) and prints the result with the operation's presenter
(``_present``), or as JSON when it has none. A paged operation asked for more than a page follows the
page tokens.
"""

from __future__ import annotations

from typing import Any

import click

from tracehouse.query import MAX_PAGE_SIZE, OperationField, ReadOperation, TraceClient, collect, operations
from tracehouse.schemas.errors import TracehouseError

from ._format import FORMATS, render_mapping
from ._present import PRESENTERS, Presenter

_URI_HELP = (
    "Server URL (default http://127.0.0.1:5000, a running `tracehouse up`), or chdb:///path "
    "or clickhouse://user:pass@host:8123/db to read a store directly. Env: TRACEHOUSE_URI."
)


def _click_type(f: OperationField) -> Any:
    if f.param.choices:
        return click.Choice(f.param.choices)
    return {"int": int, "float": float, "bool": bool}.get(f.kind, str)


def _parameters(op: ReadOperation[Any]) -> list[click.Parameter]:
    out: list[click.Parameter] = []
    for f in op.fields:
        if f.in_path or f.param.argument:
            name = (f.param.cli or f.name).upper()
            out.append(click.Argument([f.name], required=f.in_path, metavar=name if f.in_path else f"[{name}]"))
            continue
        if f.hidden:
            continue
        default = f.cli_default
        if f.kind == "strs":
            default = tuple([default] if isinstance(default, str) else default or ())
        out.append(click.Option(
            [f"--{f.cli_name}", f.name], type=_click_type(f), default=default, multiple=f.kind == "strs",
            show_default=default not in (None, ()), help=f.param.help,
        ))  # fmt: skip
    return out


def _arguments(op: ReadOperation[Any], given: dict[str, Any]) -> dict[str, Any]:
    """The operation's keyword arguments from the command's values (hidden ones at their CLI default)."""
    out: dict[str, Any] = {}
    for f in op.fields:
        if f.hidden:
            if f.cli_default is not None:
                out[f.name] = f.cli_default
            continue
        value = given.get(f.name)
        if f.kind == "strs":
            value = list(value) if value else None
        if value is not None:
            out[f.name] = value
    return out


def fetch(client: TraceClient, op: ReadOperation[Any], params: dict[str, Any]) -> Any:
    """Run ``op``; a paged operation asked for more than one page follows its page tokens."""
    limit = params.get("max_results")
    if op.items is not None and isinstance(limit, int) and limit > MAX_PAGE_SIZE:
        return collect(client.run, op, params, limit, MAX_PAGE_SIZE)
    return client.run(op, **params)


def _default_presenter(result: Any, fmt: str, ctx: click.Context) -> None:
    render_mapping(result.to_dict() if hasattr(result, "to_dict") else {"result": result}, fmt)


def read_command(op: ReadOperation[Any]) -> click.Command:
    """The ``tracehouse <op.cli>`` command of a read operation."""
    presenter: Presenter | None = PRESENTERS.get(op.name)
    extra = list(presenter.options) if presenter is not None else []

    def callback(**given: Any) -> None:
        ctx = click.get_current_context()
        uri, fmt = given.pop("uri"), given.pop("fmt")
        params = _arguments(op, given)
        try:
            with TraceClient(uri) as client:
                ctx.obj = {"client": client, "params": params, "options": given}
                result = fetch(client, op, params)
                if presenter is None:
                    _default_presenter(result, fmt, ctx)
                else:
                    presenter.show(result, fmt, ctx)
        except (TracehouseError, ValueError, ConnectionError) as exc:
            raise click.ClickException(str(exc)) from exc

    params = [
        *_parameters(op), *extra,
        click.Option(["--format", "fmt"], type=click.Choice(FORMATS), default="table", show_default=True,
                     help="Output format."),
        click.Option(["--uri"], default=None, help=_URI_HELP),
    ]  # fmt: skip
    return click.Command(op.cli or op.name, callback=callback, params=params, help=op.summary,
                         short_help=op.summary.split(". ")[0])  # fmt: skip


def read_commands() -> dict[str, click.Command]:
    """The commands of every registered read operation that has a ``cli`` name."""
    return {op.cli: read_command(op) for op in operations() if op.cli}
