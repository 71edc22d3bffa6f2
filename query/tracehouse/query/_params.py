"""Server-side query parameters: every value a caller supplies enters SQL as ``{pN:Type}``."""

from __future__ import annotations

from typing import Any


class Params:
    """Allocates ``{pN:Type}`` placeholders and collects their values for ``Store.query``.

    SQL text is built only from constants of this package and placeholders returned by
    :meth:`add`; caller-supplied strings, numbers and map keys never become SQL text.
    """

    __slots__ = ("_prefix", "values")

    def __init__(self, prefix: str = "p") -> None:
        self._prefix = prefix
        self.values: dict[str, Any] = {}

    def add(self, value: Any, ch_type: str) -> str:
        """Register ``value`` as a parameter of ClickHouse type ``ch_type``; return its placeholder."""
        name = f"{self._prefix}{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{ch_type}}}"
