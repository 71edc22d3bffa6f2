"""Trace, span and assessment ids.

A private :class:`random.Random` seeded from ``os.urandom`` (never the global one, so an application
calling ``random.seed(42)`` cannot make ids collide), re-seeded in a forked child. ``getrandbits`` is
about twice as fast as ``os.urandom(...).hex()`` (one syscall each), and ids need uniqueness, not secrecy.
"""

from __future__ import annotations

import os
import random

_rng = random.Random(os.urandom(32))
_bits = _rng.getrandbits


def _reseed() -> None:
    _rng.seed(os.urandom(32))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_trace_id() -> str:
    """``tr-`` + 32 lowercase hex characters (a 128-bit OpenTelemetry trace id, MLflow style)."""
    return f"tr-{_bits(128):032x}"


def new_span_id() -> str:
    """16 lowercase hex characters (a non-zero 64-bit OpenTelemetry span id)."""
    return f"{_bits(64) or 1:016x}"


def new_assessment_id() -> str:
    """``a-`` + 32 lowercase hex characters, as the MLflow server assigns."""
    return f"a-{_bits(128):032x}"
