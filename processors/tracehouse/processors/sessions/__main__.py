"""``python -m tracehouse.processors.sessions --bootstrap HOST:PORT --topic-prefix PREFIX``"""

from ._app import main

raise SystemExit(main())
