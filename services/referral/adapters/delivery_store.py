"""The lifecycle tracker's state in SQLite: every delivery's current state, and status reports
that arrived before the delivery they name (the two come on different topics)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from referral.domain.lifecycle import Delivery, DeliveryState


class DeliveryStore:
    """Deliveries by id, and parked reports by delivery id; shared by the tracker's threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (delivery_id TEXT PRIMARY KEY,"
            " referral_id TEXT NOT NULL, partner TEXT NOT NULL, state TEXT NOT NULL,"
            " priority TEXT NOT NULL, acknowledge_by TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS parked_reports (event_id TEXT PRIMARY KEY,"
            " delivery_id TEXT NOT NULL, parked_at TEXT NOT NULL, report BLOB NOT NULL)"
        )
        # The overdue sweep runs after every poll, busy or idle: without its index it scanned
        # every delivery ever made, several times a second.
        for statement in (
            "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, acknowledge_by)",
            "CREATE INDEX IF NOT EXISTS deliveries_by_referral"
            " ON deliveries (referral_id, partner)",
            "CREATE INDEX IF NOT EXISTS parked_by_delivery ON parked_reports (delivery_id)",
            "CREATE INDEX IF NOT EXISTS parked_by_time ON parked_reports (parked_at)",
        ):
            self._db.execute(statement)
        self._lock = threading.Lock()

    def get(self, delivery_id: str) -> Delivery | None:
        with self._lock:
            row = self._db.execute(
                "SELECT referral_id, partner, state FROM deliveries WHERE delivery_id = ?",
                (delivery_id,),
            ).fetchone()
        return Delivery(delivery_id, row[0], row[1], DeliveryState(row[2])) if row else None

    def add(self, delivery: Delivery, priority: str, acknowledge_by: datetime) -> bool:
        """Record a new delivery; False if it was already known (a replayed event)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?, ?, ?)",
                (
                    delivery.delivery_id,
                    delivery.referral_id,
                    delivery.partner,
                    delivery.state,
                    priority,
                    acknowledge_by.astimezone(UTC).isoformat(),
                ),
            )
        return cursor.rowcount == 1

    def of_referral(self, referral_id: str, partner: str) -> list[Delivery]:
        """Every delivery of a referral to one partner."""
        with self._lock:
            rows = self._db.execute(
                "SELECT delivery_id, state FROM deliveries WHERE referral_id = ? AND partner = ?"
                " ORDER BY delivery_id",
                (referral_id, partner),
            ).fetchall()
        return [Delivery(row[0], referral_id, partner, DeliveryState(row[1])) for row in rows]

    def overdue(self, moment: datetime) -> list[tuple[Delivery, str, datetime]]:
        """Deliveries still unacknowledged after their deadline, with priority and deadline."""
        with self._lock:
            rows = self._db.execute(
                "SELECT delivery_id, referral_id, partner, state, priority, acknowledge_by"
                " FROM deliveries WHERE state = ? AND acknowledge_by < ?"
                " ORDER BY acknowledge_by",
                (DeliveryState.DELIVERED, moment.astimezone(UTC).isoformat()),
            ).fetchall()
        return [
            (
                Delivery(row[0], row[1], row[2], DeliveryState(row[3])),
                row[4],
                datetime.fromisoformat(row[5]),
            )
            for row in rows
        ]

    def set_state(self, delivery_id: str, state: DeliveryState) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET state = ? WHERE delivery_id = ?", (state, delivery_id)
            )

    def park(self, event_id: str, delivery_id: str, parked_at: datetime, report: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO parked_reports VALUES (?, ?, ?, ?)",
                (event_id, delivery_id, parked_at.isoformat(), report),
            )

    def take_parked(self, delivery_id: str) -> list[tuple[str, bytes]]:
        """Remove and return the reports parked for a delivery, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, report FROM parked_reports WHERE delivery_id = ?"
                " ORDER BY parked_at",
                (delivery_id,),
            ).fetchall()
            self._db.execute("DELETE FROM parked_reports WHERE delivery_id = ?", (delivery_id,))
        return [(row[0], row[1]) for row in rows]

    def take_parked_before(self, moment: datetime) -> list[tuple[str, bytes]]:
        """Remove and return reports parked before `moment` (their delivery never showed up)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, report FROM parked_reports WHERE parked_at < ?"
                " ORDER BY parked_at",
                (moment.isoformat(),),
            ).fetchall()
            self._db.execute(
                "DELETE FROM parked_reports WHERE parked_at < ?", (moment.isoformat(),)
            )
        return [(row[0], row[1]) for row in rows]

    def close(self) -> None:
        self._db.close()
