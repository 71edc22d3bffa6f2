"""The app layer: the ``tracehouse`` command, the HTTP server, ``tracehouse up`` and the embedded Kafka
broker. It sits on top of every other package and nothing imports it.

Importing it imports no third-party package: an app that installed only the SDK
(``pip install tracehouse``) gets a one-line explanation from the command instead of a traceback.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Entry point of the ``tracehouse`` command (``python -m tracehouse.app`` too)."""
    try:
        from tracehouse.app.cli import main as cli
    except ImportError as exc:
        sys.exit(f"tracehouse: the command needs the server extras: pip install 'tracehouse[server]' ({exc})")
    cli()
