"""Options shared by the commands. An option backed by a setting has no click default and no click
``envvar``: the component resolves it through :mod:`tracehouse.schemas.settings` (argument >
environment > default), the one reader of the environment; the help shows the variable and default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from tracehouse.schemas.settings import Setting

F = TypeVar("F", bound=Callable[..., Any])


def setting_option(setting: Setting[Any], *decls: str, help: str, **kwargs: Any) -> Callable[[F], F]:
    """A ``click.option`` for ``setting``: unset unless given, its help naming the variable and default."""
    default = setting.default
    shown = "unset" if default is None else ("true" if default is True else "false" if default is False else default)
    text = f"{help} [env {setting.env}; default {shown if not setting.secret else 'unset'}]"
    return click.option(*decls, default=None, help=text, **kwargs)
