"""The ``tracehouse`` command line.

The query commands (``search``, ``trace``, ``users``, ``user``, ``sessions``, ``session``) are derived
from the read operations of :mod:`tracehouse.query`, one per operation; the others run the pipeline
(``up``, ``serve``, ``demo``, ``migrate``, ``topics``, ``status``) and its processes (``sink``, ``sessionizer``,
``dlq``).
"""

from __future__ import annotations

import click

from ._pipeline import demo, migrate, serve, topics, up
from ._reads import read_commands
from ._status import status
from ._workers import dlq, processors_main, sessionizer, sessionizer_main, sink

__all__ = ["main", "processors_main", "sessionizer_main"]


class _Commands(click.Group):
    """The group of commands; read operations registered after import are offered too."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *read_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or read_commands().get(cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracehouse")
def main() -> None:
    """tracehouse: track the users and sessions of GenAI applications at high volume.

    Start everything locally with `tracehouse up`, send traffic with `tracehouse demo`,
    then explore with `search`, `user`, `sessions` and `session`.
    """


for _command in (up, serve, demo, migrate, topics, status, sink, sessionizer, dlq, *read_commands().values()):
    main.add_command(_command)
