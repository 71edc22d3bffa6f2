"""What every page of a listing shares: its items (under the listing's own name, e.g. ``users``), the
token of the next page, iteration, and the JSON body ``{<items>: [...], "next_page_token": ...}``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Self


class Page:
    """Mixin for a frozen page dataclass with a list field named :attr:`ITEMS` of :attr:`ITEM`\\ s and a
    ``next_page_token`` field."""

    __slots__ = ()
    ITEMS: ClassVar[str]
    ITEM: ClassVar[Any]  # a class with to_dict() / from_dict()
    next_page_token: str | None  # a field of the dataclass

    def _items(self) -> list[Any]:
        items: list[Any] = getattr(self, self.ITEMS)
        return items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def to_dict(self) -> dict[str, Any]:
        return {self.ITEMS: [i.to_dict() for i in self._items()], "next_page_token": self.next_page_token}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        items = [cls.ITEM.from_dict(x) for x in d.get(cls.ITEMS) or []]
        return cls(**{cls.ITEMS: items, "next_page_token": d.get("next_page_token") or None})
