"""``python -m tracehouse.query.cli`` is the ``tracehouse`` command."""

from . import main

main()
