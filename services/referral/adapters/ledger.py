"""The intake ledger: which source references were already accepted, kept in SQLite.

It makes a repeated submission return the first referral's id instead of creating a second
referral. The id itself is derived from the source and its reference, so even a submission
racing its own retry publishes the same referral id and the router routes it once.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

_REFERRAL_NAMESPACE = uuid.UUID("7d0b54d2-3f8e-4f2a-9a55-3e8f3c2d1a10")


def referral_id_for(source: str, source_reference: str) -> str:
    """The stable referral id of a source's report."""
    return "ref-" + uuid.uuid5(_REFERRAL_NAMESPACE, f"{source}\x1f{source_reference}").hex[:20]


def amendment_event_id(referral_id: str, amendment_reference: str) -> str:
    """The stable event id of an amendment the source identified with its own reference."""
    return (
        "amd-" + uuid.uuid5(_REFERRAL_NAMESPACE, f"{referral_id}\x1f{amendment_reference}").hex[:20]
    )


@dataclass(frozen=True)
class LedgerEntry:
    referral_id: str
    received_at: datetime


class IntakeLedger:
    """Accepted (source, source_reference) pairs; safe to share between gRPC worker threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS accepted ("
            " source TEXT NOT NULL, source_reference TEXT NOT NULL,"
            " referral_id TEXT NOT NULL, received_at TEXT NOT NULL,"
            " PRIMARY KEY (source, source_reference))"
        )
        self._lock = threading.Lock()

    def find(self, source: str, source_reference: str) -> LedgerEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT referral_id, received_at FROM accepted"
                " WHERE source = ? AND source_reference = ?",
                (source, source_reference),
            ).fetchone()
        return LedgerEntry(row[0], datetime.fromisoformat(row[1])) if row else None

    def find_by_id(self, referral_id: str) -> tuple[str, str] | None:
        """The (source, source_reference) of an accepted referral."""
        with self._lock:
            row = self._db.execute(
                "SELECT source, source_reference FROM accepted WHERE referral_id = ?",
                (referral_id,),
            ).fetchone()
        return (row[0], row[1]) if row else None

    def record(self, source: str, source_reference: str, entry: LedgerEntry) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO accepted VALUES (?, ?, ?, ?)",
                (source, source_reference, entry.referral_id, entry.received_at.isoformat()),
            )

    def close(self) -> None:
        self._db.close()
