"""One rule for every processor setting read from the environment: explicit > environment > default."""

from __future__ import annotations

import os
from collections.abc import Mapping


def pick(explicit: str | None, var: str, default: str, env: Mapping[str, str] | None = None) -> str:
    """``explicit`` if given, else a non-empty ``env[var]`` (default ``os.environ``), else ``default``."""
    if explicit is not None:
        return explicit
    from_env = (os.environ if env is None else env).get(var)
    return from_env if from_env else default
