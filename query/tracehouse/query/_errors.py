"""Typed errors of the query layer.

Every error caused by bad caller input derives from :class:`InvalidParameterError`, a ``ValueError``
carrying MLflow's ``error_code`` (``INVALID_PARAMETER_VALUE``) and HTTP status (400), so the HTTP
layer can answer ``{"error_code": err.error_code, "message": str(err)}`` without a lookup table.
"""

from __future__ import annotations

from typing import ClassVar, Final

INVALID_PARAMETER_VALUE: Final = "INVALID_PARAMETER_VALUE"


class InvalidParameterError(ValueError):
    """A request parameter is invalid (HTTP 400, ``INVALID_PARAMETER_VALUE``).

    ``position`` is the 0-based character offset of the offending text inside the parameter
    (filter string or order_by clause) when it is known, and ``token`` that text.
    """

    error_code: ClassVar[str] = INVALID_PARAMETER_VALUE
    http_status: ClassVar[int] = 400

    def __init__(self, message: str, *, position: int | None = None, token: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.token = token

    def to_dict(self) -> dict[str, str]:
        """MLflow's error body: ``{"error_code": ..., "message": ...}``."""
        return {"error_code": self.error_code, "message": self.message}


class InvalidFilterError(InvalidParameterError):
    """The ``filter_string`` of a search does not follow the trace search grammar."""


class InvalidOrderByError(InvalidParameterError):
    """An ``order_by`` clause is malformed or names a key that cannot be ordered by."""


class InvalidPageTokenError(InvalidParameterError):
    """A ``page_token`` is malformed or belongs to a different search."""


class ImmutableMetadataError(TypeError):
    """Raised on any attempt to change trace metadata, which is immutable once a trace is logged."""
