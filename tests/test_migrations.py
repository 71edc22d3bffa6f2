"""Migration 5 rebuilds ``trace_tags`` under a new layout on the real engine: every row survives,
including rows written while it copies and after a failure half-way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tracehouse.storage import Store, latest_version, migrate
from tracehouse.storage._rebuild import rebuilt

TAGS = "SELECT trace_id, key, value, version, is_deleted FROM trace_tags ORDER BY ALL"
GRANULES = "index_granularity = 256"


def fill_tags(store: Store, first: int, count: int) -> None:
    """``count`` traces' tags: two keys each, an older version of one, and a deletion of every 7th."""
    store.command(
        "INSERT INTO trace_tags SELECT concat('tr-', toString(n)), k, concat('v', toString(n)), v, d "
        "FROM (SELECT number + {first:UInt64} AS n FROM numbers({count:UInt64})) "
        "ARRAY JOIN ['a', 'b', 'a'] AS k, [1, 1, 2] AS v, [0, 0, toUInt8(n % 7 = 0)] AS d",
        {"first": first, "count": count},
    )


def visible(ns: range) -> int:
    """Rows ``trace_tags FINAL`` shows for the traces ``ns`` of :func:`fill_tags`: ``b``, and ``a``
    unless deleted."""
    return sum(1 if n % 7 == 0 else 2 for n in ns)


def at_version_4(store: Store) -> None:
    migrate(store, upto=4)
    assert not rebuilt(store, "trace_tags", GRANULES)


@pytest.mark.integration
def test_rebuild_keeps_every_row_and_takes_the_new_layout(store_uri: str) -> None:
    with Store(store_uri) as store:
        at_version_4(store)
        fill_tags(store, 0, 20_000)
        before = store.query(TAGS)
        applied = migrate(store, upto=5)
        assert [m.version for m in applied] == [5]
        assert latest_version() >= 5
        assert rebuilt(store, "trace_tags", GRANULES)
        assert store.query(TAGS) == before
        assert not store.query("EXISTS TABLE trace_tags_rebuild")[0][0]
        assert store.query("SELECT count() FROM trace_tags FINAL")[0][0] == visible(range(20_000))
        # 8192-row granules would make a handful of marks
        marks = store.query("SELECT sum(marks) FROM system.parts WHERE table = 'trace_tags' AND active")[0][0]
        assert marks >= len(before) // 256
        assert migrate(store, upto=5) == []


class _WritesBeforeExchange(Store):
    """A store whose exchange is preceded by a write to ``trace_tags``, as a running sink's could be
    (the copy is already made, so only the catch-up can keep it), and which can fail right after."""

    fail_after_exchange = False

    def command(
        self, sql: str, parameters: Mapping[str, Any] | None = None, settings: Mapping[str, Any] | None = None
    ) -> Any:
        if sql.startswith("EXCHANGE TABLES trace_tags"):
            fill_tags(self, 1_000_000, 500)
        result = super().command(sql, parameters, settings)
        if sql.startswith("EXCHANGE TABLES trace_tags") and self.fail_after_exchange:
            raise ConnectionError("lost the server right after the exchange")
        return result


@pytest.mark.integration
def test_rows_written_during_the_copy_are_kept(store_uri: str) -> None:
    with _WritesBeforeExchange(store_uri) as store:
        at_version_4(store)
        fill_tags(store, 0, 5_000)
        migrate(store)
        late = range(1_000_000, 1_000_500)
        assert store.query("SELECT count() FROM trace_tags FINAL")[0][0] == visible(range(5_000)) + visible(late)
        ids = {r[0] for r in store.query("SELECT DISTINCT trace_id FROM trace_tags")}
        assert {f"tr-{n}" for n in late} <= ids
        assert rebuilt(store, "trace_tags", GRANULES)


@pytest.mark.integration
def test_a_failure_after_the_exchange_loses_nothing_on_rerun(store_uri: str) -> None:
    store = _WritesBeforeExchange(store_uri)
    with store:
        at_version_4(store)
        fill_tags(store, 0, 5_000)
        store.fail_after_exchange = True
        with pytest.raises(ConnectionError):
            migrate(store, upto=5)
        # The new table is in place but holds only the copy; the late rows are still in the old one.
        assert store.query("EXISTS TABLE trace_tags_rebuild")[0][0]
        assert store.query("SELECT count() FROM trace_tags FINAL")[0][0] == visible(range(5_000))
        store.fail_after_exchange = False
        assert [m.version for m in migrate(store, upto=5)] == [5]
        late = range(1_000_000, 1_000_500)
        assert store.query("SELECT count() FROM trace_tags FINAL")[0][0] == visible(range(5_000)) + visible(late)
        assert not store.query("EXISTS TABLE trace_tags_rebuild")[0][0]
