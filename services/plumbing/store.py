"""A small durable keyed store in SQLite, for the records a service must never create twice.

Downstream services key their work items and cases by delivery id: a delivery replayed after a
crash or rebalance finds its record already there and is not acted on a second time.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


class KeyedStore:
    """JSON records by key, written once (`add_if_absent`) and updated explicitly."""

    def __init__(self, path: Path, table: str) -> None:
        if not table.isidentifier():
            raise ValueError(f"invalid table name {table!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._table = table
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, record TEXT NOT NULL)"
        )
        self._lock = threading.Lock()

    def add_if_absent(self, key: str, record: dict[str, Any]) -> bool:
        """Store `record` under `key` unless one is there; True if it was added."""
        with self._lock:
            cursor = self._db.execute(
                f"INSERT OR IGNORE INTO {self._table} VALUES (?, ?)",  # noqa: S608 - checked name
                (key, json.dumps(record, sort_keys=True)),
            )
            return cursor.rowcount == 1

    def put(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO {self._table} VALUES (?, ?)",  # noqa: S608 - checked name
                (key, json.dumps(record, sort_keys=True)),
            )

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT record FROM {self._table} WHERE key = ?",  # noqa: S608 - checked name
                (key,),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT record FROM {self._table} ORDER BY key"  # noqa: S608 - checked name
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def close(self) -> None:
        self._db.close()
