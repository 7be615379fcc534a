"""The audit chain in SQLite: append-only by convention of this code, tamper-evident by hashes.

Entries are idempotent by event id, so replaying the lifecycle topic appends nothing twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from referral.domain.audit_chain import GENESIS, AuditEntry, entry_hash


class AuditLog:
    """Append entries; read them back in order for verification."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL"
            " UNIQUE, recorded_at TEXT NOT NULL, kind TEXT NOT NULL, referral_id TEXT NOT NULL,"
            " body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
        )
        self._lock = threading.Lock()

    def append(
        self,
        event_id: str,
        recorded_at: datetime,
        kind: str,
        referral_id: str,
        body: dict[str, Any],
    ) -> bool:
        """Append one entry; False if this event was already recorded."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM audit WHERE event_id = ?", (event_id,)).fetchone():
                return False
            last = self._db.execute(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            when = recorded_at.isoformat()
            digest = entry_hash(seq, event_id, when, kind, referral_id, body, prev)
            self._db.execute(
                "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    event_id,
                    when,
                    kind,
                    referral_id,
                    json.dumps(body, sort_keys=True),
                    prev,
                    digest,
                ),
            )
            return True

    def entries(self) -> Iterator[AuditEntry]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        for row in rows:
            yield AuditEntry(
                row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7]
            )

    def close(self) -> None:
        self._db.close()
