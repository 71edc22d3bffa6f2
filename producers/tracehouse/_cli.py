"""Entry point of the ``tracehouse`` command.

The command lives with the server-side parts (``pip install 'tracehouse[server]'``); an app that
installed only the SDK gets a one-line explanation instead of a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from tracehouse.query.cli import main as cli
    except ImportError as exc:
        sys.exit(f"tracehouse: the command needs the server extras: pip install 'tracehouse[server]' ({exc})")
    cli()
