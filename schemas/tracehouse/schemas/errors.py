"""Every error tracehouse raises on purpose, in one hierarchy rooted at :class:`TracehouseError`.

``except tracehouse.TracehouseError`` catches all of them. Each class also derives from the builtin
exception a caller would naturally catch for it (``ValueError`` for bad input, ``RuntimeError`` for a
component that could not start), so code written against those keeps working.

Every error carries MLflow's ``error_code`` and the HTTP status the server answers it with, so the HTTP
layer maps any of them to ``{"error_code": ..., "message": ...}`` without a lookup table. Bad input is
always a 4xx: MLflow's client retries a 5xx for minutes.

=============================  ===========================  ======  ====================================
class                          also a                       status  raised when
=============================  ===========================  ======  ====================================
:class:`ConfigurationError`    ``ValueError``               400     a setting has an invalid value
:class:`ImmutableMetadataError` ``ValueError``, ``TypeError`` 400   trace metadata or an immutable tag
                                                                    would change after logging
:class:`InvalidParameterError` ``ValueError``               400     a read parameter is invalid
:class:`InvalidFilterError`    (an InvalidParameterError)   400     a filter string does not parse
:class:`InvalidOrderByError`   (an InvalidParameterError)   400     an order_by clause is invalid
:class:`InvalidPageTokenError` (an InvalidParameterError)   400     a page token is not this search's
:class:`InvalidRequest`        ``ValueError``               4xx     a write request is refused
:class:`NotFound`              ``LookupError``              404     a trace, experiment... is unknown
:class:`ExperimentExists`      ``ValueError``               400     an experiment name is taken
:class:`EventDecodeError`      ``ValueError``               400     an event line is not a valid event
:class:`StoreURIError`         ``ValueError``               400     a store URI is not understood
:class:`RemoteError`           ``ValueError``               (any)   a tracehouse server refused a call
:class:`Unavailable`           —                            503     Kafka did not take a write
:class:`BrokerError`           ``RuntimeError``             500     the embedded broker did not start
:class:`DeadLetterLimitExceeded` ``RuntimeError``           500     the sink refused too many lines in
                                                                    a row or of the latest lines, and
                                                                    stopped without committing them
=============================  ===========================  ======  ====================================
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "INVALID_PARAMETER_VALUE",
    "BrokerError",
    "ConfigurationError",
    "DeadLetterLimitExceeded",
    "EventDecodeError",
    "ExperimentExists",
    "ImmutableMetadataError",
    "InvalidFilterError",
    "InvalidOrderByError",
    "InvalidPageTokenError",
    "InvalidParameterError",
    "InvalidRequest",
    "NotFound",
    "RemoteError",
    "StoreURIError",
    "TracehouseError",
    "Unavailable",
    "WriteStuck",
]

INVALID_PARAMETER_VALUE: Final = "INVALID_PARAMETER_VALUE"


class TracehouseError(Exception):
    """The root of tracehouse's errors. ``error_code`` is MLflow's code for it, ``http_status`` the
    status an HTTP answer carries."""

    error_code: str = "INTERNAL_ERROR"
    http_status: int = 500

    @property
    def status(self) -> int:
        """Alias of :attr:`http_status`."""
        return self.http_status

    def to_dict(self) -> dict[str, str]:
        """MLflow's error body: ``{"error_code": ..., "message": ...}``."""
        return {"error_code": self.error_code, "message": str(self)}


class ConfigurationError(TracehouseError, ValueError):
    """A setting (argument or ``TRACEHOUSE_*`` variable) has an invalid value; the message names it."""

    error_code = INVALID_PARAMETER_VALUE
    http_status = 400


class ImmutableMetadataError(TracehouseError, ValueError, TypeError):
    """An attempt to change trace metadata (or an immutable tag) after it was logged.

    Trace metadata, including the identity keys ``mlflow.trace.user`` and ``mlflow.trace.session``, is
    immutable once the trace is logged: set it with ``update_current_trace(metadata=...)`` while the
    trace is active. Tags stay mutable: use ``set_trace_tag`` / ``delete_trace_tag``. It is a
    ``ValueError`` (the SDK's tag API) and a ``TypeError`` (the query objects' immutable mappings).
    """

    error_code = INVALID_PARAMETER_VALUE
    http_status = 400


class InvalidParameterError(TracehouseError, ValueError):
    """A request parameter is invalid (HTTP 400, ``INVALID_PARAMETER_VALUE``).

    ``position`` is the 0-based character offset of the offending text inside the parameter (filter
    string or order_by clause) when it is known, and ``token`` that text.
    """

    error_code = INVALID_PARAMETER_VALUE
    http_status = 400

    def __init__(self, message: str, *, position: int | None = None, token: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.token = token


class InvalidFilterError(InvalidParameterError):
    """The ``filter_string`` of a search does not follow the trace search grammar."""


class InvalidOrderByError(InvalidParameterError):
    """An ``order_by`` clause is malformed or names a key that cannot be ordered by."""


class InvalidPageTokenError(InvalidParameterError):
    """A ``page_token`` is malformed or belongs to a different search."""


class _Coded(TracehouseError):
    """An error whose code and status are chosen where it is raised."""

    def __init__(self, message: str, error_code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code
        if status is not None:
            self.http_status = status


class InvalidRequest(_Coded, ValueError):
    """A write request the gateway refuses (4xx, never 5xx); ``error_code`` and the status are MLflow's."""

    error_code = INVALID_PARAMETER_VALUE
    http_status = 400


class NotFound(_Coded, LookupError):
    """What a request names does not exist (404, ``RESOURCE_DOES_NOT_EXIST``)."""

    error_code = "RESOURCE_DOES_NOT_EXIST"
    http_status = 404


class ExperimentExists(TracehouseError, ValueError):
    """An experiment with this name exists already."""

    error_code = "RESOURCE_ALREADY_EXISTS"
    http_status = 400


class EventDecodeError(TracehouseError, ValueError):
    """A line of an envelope is not a valid event. ``str(err)`` says what was wrong and where."""

    error_code = INVALID_PARAMETER_VALUE
    http_status = 400


class StoreURIError(TracehouseError, ValueError):
    """The store URI is not one tracehouse understands."""

    error_code = INVALID_PARAMETER_VALUE
    http_status = 400


class RemoteError(_Coded, ValueError):
    """A tracehouse server rejected a request; ``error_code`` and ``status`` are what it answered."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message, error_code, status)


class Unavailable(_Coded):
    """Kafka did not take a write: a 503, which clients retry (after ``retry_after_s``, when set: the
    HTTP answer carries it as ``Retry-After``)."""

    error_code = "TEMPORARILY_UNAVAILABLE"
    http_status = 503
    retry_after_s: float | None = None


class BrokerError(TracehouseError, RuntimeError):
    """The embedded broker could not be found or did not start."""


class WriteStuck(TracehouseError, RuntimeError):
    """A ClickHouse write did not return within the sink's ``write_timeout_s``. The sink stops without
    committing anything more (a thread stuck in a write cannot be cancelled); restarted, it replays its
    batches from the committed offsets, exactly (the ledger and first write wins)."""


class DeadLetterLimitExceeded(TracehouseError, RuntimeError):
    """The sink refused too many lines in a row, or too large a share of the latest lines (a producer
    writing another format, a schema the sink does not know), and stopped instead of dead-lettering the
    whole stream. The batches it held were not committed: their records are read again at the next
    start. ``str(err)`` says what was refused, why, and how to proceed."""
