"""Rebuild a table under new create-time settings (``index_granularity`` cannot be altered), keeping
every row, including rows a running sink inserts meanwhile.

1. create ``<table>_rebuild`` with the new settings (a leftover of a failed attempt is dropped first);
2. note the old table's active parts, copy every row over;
3. ``EXCHANGE TABLES`` (atomic: readers and writers see one table or the other, never neither);
4. copy again the rows of the old table's parts that were not in the list (inserted, or merged from
   such inserts, during the copy). Rows copied twice are the same (key, version) and collapse under
   the ReplacingMergeTree, as a replayed batch does;
5. drop the old table.

Re-running after a failure is safe: before the exchange the partial copy is dropped and redone;
after it (the table already has the new settings but ``<table>_rebuild`` still exists) every row of
the old table is copied again, then it is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from ._store import Store


def rebuilt(store: Store, table: str, marker: str) -> bool:
    """Whether ``table``'s create statement already contains ``marker`` (e.g. its new setting)."""
    rows = store.query(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        {"t": table},
    )
    return bool(rows) and marker in str(rows[0][0])


def _exists(store: Store, table: str) -> bool:
    return bool(store.query(f"EXISTS TABLE {table}")[0][0])


def _active_parts(store: Store, table: str) -> list[str]:
    rows = store.query(
        "SELECT name FROM system.parts WHERE database = currentDatabase() AND table = {t:String} AND active",
        {"t": table},
    )
    return [str(r[0]) for r in rows]


def rebuild_table(store: Store, table: str, create: Callable[[str], str], marker: str) -> bool:
    """Rebuild ``table`` as ``create(name)`` makes it, unless its definition already has ``marker``.
    Returns whether rows were copied."""
    staging = f"{table}_rebuild"
    if rebuilt(store, table, marker):
        if not _exists(store, staging):
            return False
        # A failure after the exchange: the old rows are in the staging table; copy them all again.
        store.command(f"INSERT INTO {table} SELECT * FROM {staging}")
        store.command(f"DROP TABLE {staging}")
        return True
    store.command(f"DROP TABLE IF EXISTS {staging}")
    store.command(create(staging))
    before = _active_parts(store, table)
    store.command(f"INSERT INTO {staging} SELECT * FROM {table}")
    store.command(f"EXCHANGE TABLES {table} AND {staging}")
    # `staging` is now the old table: its rows inserted while the copy ran.
    store.command(
        f"INSERT INTO {table} SELECT * FROM {staging} WHERE _part NOT IN {{before:Array(String)}}",
        {"before": before},
    )
    store.command(f"DROP TABLE {staging}")
    return True
