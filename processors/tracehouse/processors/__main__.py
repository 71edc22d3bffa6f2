"""``python -m tracehouse.processors sink|dlq ...``"""

from ._cli import main

raise SystemExit(main())
