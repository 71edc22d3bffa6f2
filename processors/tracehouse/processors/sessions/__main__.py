"""``python -m tracehouse.processors.sessions ...``: the app's ``tracehouse sessionizer`` command under
its old name (a shim; the command line lives in the app layer)."""

from tracehouse.app.cli import sessionizer_main

raise SystemExit(sessionizer_main())
