"""Sessions and per-user rollups: pure, idempotent, order-independent state (no I/O).

The stream processors fold traces into these states and ship their records; property tests prove
them equal to a brute-force computation under duplicates, reordering, late turns and merges.
"""

from ._config import DEFAULT_SESSIONIZER_ID, SessionizerConfig
from ._facts import TraceFacts, facts_from_line
from ._fold import SessionizerStats
from ._rollup import DAY_MS, RollupBucket, day_of, quantile
from ._session import (
    SessionConfig,
    SessionState,
    SessionStatus,
    apply,
    close,
    close_due,
    inferred_session_id,
    new_session,
)
from ._worker import Sessionizer, create_sessionizer, run_sessionizer

__all__ = [
    "DAY_MS",
    "DEFAULT_SESSIONIZER_ID",
    "RollupBucket",
    "SessionConfig",
    "SessionState",
    "SessionStatus",
    "Sessionizer",
    "SessionizerConfig",
    "SessionizerStats",
    "TraceFacts",
    "apply",
    "close",
    "close_due",
    "create_sessionizer",
    "day_of",
    "facts_from_line",
    "inferred_session_id",
    "new_session",
    "quantile",
    "run_sessionizer",
]
