"""Stream processors. The sink consumes trace envelopes and writes ClickHouse rows exactly once in
effect: offsets are committed only after the insert that covers them, and a batch ledger plus
offset-derived deduplication tokens make a replay after a crash a no-op.

Run it with ``python -m tracehouse.processors sink --bootstrap HOST:PORT --store chdb:///path``. Lines
it refuses go to the dead-letter topic; :func:`read_dlq` lists them and :func:`replay_dead_letters`
reinserts or drops them (``tracehouse dlq list`` / ``tracehouse dlq replay``).
"""

from tracehouse.storage import LEDGER_TABLE, Ledger

from ._batch import advance_mark, batch_token
from ._config import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_GROUP_ID,
    DEFAULT_STORE_URI,
    ENV_BOOTSTRAP,
    ENV_STORE_URI,
    ENV_TOPIC_PREFIX,
    SinkConfig,
)
from ._dlq import (
    HEADER_ORIGIN_LINE,
    HEADER_ORIGIN_OFFSET,
    HEADER_ORIGIN_PARTITION,
    HEADER_ORIGIN_TOPIC,
    HEADER_REASON,
    HEADER_TIME,
    HEADER_TRUNCATED,
    WHOLE_MESSAGE,
    DeadLetter,
    read_dlq,
)
from ._epoch import EpochUnavailable, epoch_scope, read_epoch
from ._replay import (
    DEFAULT_REPLAY_GROUP,
    HEADER_REPLAYED_FROM,
    ReplayPolicy,
    ReplayReport,
    handled_offsets,
    replay_dead_letters,
)
from ._sink import Sink
from ._state import SinkStats
from ._validate import DEFAULT_MAX_EVENT_BYTES, Rejection, check_event, validate_line

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_GROUP_ID",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_REPLAY_GROUP",
    "DEFAULT_STORE_URI",
    "ENV_BOOTSTRAP",
    "ENV_STORE_URI",
    "ENV_TOPIC_PREFIX",
    "HEADER_ORIGIN_LINE",
    "HEADER_ORIGIN_OFFSET",
    "HEADER_ORIGIN_PARTITION",
    "HEADER_ORIGIN_TOPIC",
    "HEADER_REASON",
    "HEADER_REPLAYED_FROM",
    "HEADER_TIME",
    "HEADER_TRUNCATED",
    "LEDGER_TABLE",
    "WHOLE_MESSAGE",
    "DeadLetter",
    "EpochUnavailable",
    "Ledger",
    "Rejection",
    "ReplayPolicy",
    "ReplayReport",
    "Sink",
    "SinkConfig",
    "SinkStats",
    "advance_mark",
    "batch_token",
    "check_event",
    "epoch_scope",
    "handled_offsets",
    "read_dlq",
    "read_epoch",
    "replay_dead_letters",
    "validate_line",
]
