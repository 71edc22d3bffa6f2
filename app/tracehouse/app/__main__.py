"""``python -m tracehouse.app`` is the ``tracehouse`` command."""

from tracehouse.app import main

main()
