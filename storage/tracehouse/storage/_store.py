"""A connection to ClickHouse: the embedded chDB engine or a ClickHouse server, chosen by URI.

``chdb:///path/to/dir``                      the in-process engine (one process per path)
``clickhouse://user:pass@host:8123/db``      a ClickHouse server over HTTP
``clickhouses://user:pass@host:8443/db``     the same over HTTPS

Everything above this class speaks SQL with server-side parameters (``{name:Type}``), so the same
code runs on both. Calls are serialised by a lock: chDB is one engine per process and the HTTP
client keeps one session.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import clickhouse_connect

from tracehouse.schemas.errors import StoreURIError


def _client_kwargs(uri: str) -> tuple[dict[str, Any], str]:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "chdb":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise StoreURIError(f"chdb URI needs a path, e.g. chdb:///var/lib/tracehouse: {uri!r}")
        Path(path).mkdir(parents=True, exist_ok=True)
        return {"dsn": f"chdb://{Path(path).resolve()}"}, "default"
    if scheme in ("clickhouse", "clickhouses", "http", "https"):
        secure = scheme in ("clickhouses", "https")
        database = parts.path.strip("/") or "default"
        return {
            "host": parts.hostname or "localhost",
            "port": parts.port or (8443 if secure else 8123),
            "username": unquote(parts.username or "default"),
            "password": unquote(parts.password or ""),
            "secure": secure,
            "database": "default",
        }, database
    raise StoreURIError(
        f"unsupported store URI {uri!r}: use chdb:///path or clickhouse://user:pass@host:8123/db"
    )


#: Reads are bounded so that one runaway query cannot hold the store (and, in `tracehouse up`, the
#: sink's inserts behind the same lock) indefinitely.
READ_SETTINGS = {"max_execution_time": 30}


class Store:
    """A thread-safe handle on one ClickHouse database."""

    def __init__(self, uri: str) -> None:
        kwargs, database = _client_kwargs(uri)
        self.uri = uri
        self.database = database
        self.embedded = "dsn" in kwargs
        self._lock = threading.RLock()
        self._client = clickhouse_connect.get_client(**kwargs)
        if database != "default":
            self._client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            self._client.close()
            kwargs["database"] = database
            self._client = clickhouse_connect.get_client(**kwargs)

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a SELECT and return its rows as tuples."""
        with self._lock:
            result = self._client.query(sql, parameters=dict(parameters or {}), settings=READ_SETTINGS)
            return [tuple(r) for r in result.result_rows]

    def query_dicts(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT and return its rows as dicts keyed by column name."""
        with self._lock:
            result = self._client.query(sql, parameters=dict(parameters or {}), settings=READ_SETTINGS)
            names = result.column_names
            return [dict(zip(names, r, strict=True)) for r in result.result_rows]

    def command(
        self, sql: str, parameters: Mapping[str, Any] | None = None, settings: Mapping[str, Any] | None = None
    ) -> Any:
        """Run a statement that returns no rows (DDL, OPTIMIZE, INSERT ... SELECT, ...)."""
        with self._lock:
            return self._client.command(
                sql, parameters=dict(parameters) if parameters else None, settings=dict(settings) if settings else None
            )

    def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert rows (in ``column_names`` order) in one block."""
        if not rows:
            return
        with self._lock:
            self._client.insert(
                table, rows, column_names=list(column_names), settings=dict(settings or {})
            )

    def close(self) -> None:
        with self._lock:
            self._client.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
