"""``python -m tracehouse.processors sink|dlq ...``: the app's ``tracehouse sink`` / ``tracehouse dlq``
commands under their old name (a shim; the command line lives in the app layer)."""

from tracehouse.app.cli import processors_main

raise SystemExit(processors_main())
