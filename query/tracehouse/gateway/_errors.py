"""The one error the gateway raises for input it refuses."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request the gateway refuses; ``error_code`` and ``status`` are MLflow's (4xx, never 5xx:
    the MLflow client retries a 5xx for minutes)."""

    def __init__(self, message: str, error_code: str = "INVALID_PARAMETER_VALUE", status: int = 400) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status
