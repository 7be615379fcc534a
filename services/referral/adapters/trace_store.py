"""The trace store: every referral's events, kept so operators can ask where a referral stands.

Why a store at all: the topics hold the truth, but answering "which referrals are overdue at
CBP?" by reading every topic from the beginning takes minutes; the store answers in
milliseconds. It is a projection, never a source: `reset` and a replay of the topics rebuild it.

Two implementations of one `TraceStore` contract:

* SQLite, the default: a file in `CTROUTE_DATA_DIR` (`trace-store.sqlite3`), durable across
  restarts, nothing to run.
* PostgreSQL, when `CTROUTE_TRACE_STORE_URL=postgresql://...` is set: for deployments where
  several query servers share one store, or operators query it with SQL.

What is stored: the events (as `TraceEvent`s, which hold operational fields only, so no personal
data can reach the store), keyed by their CloudEvents id, so a replayed record is not stored
twice; each with the trace id of the record's `traceparent`. Two small tables derived from a
referral's events on every write (its deliveries' current states and deadlines, and its listing
time) serve the list filters without folding every referral.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg

from referral.domain.lifecycle import DeliveryState
from referral.domain.timeline import (
    UNACKNOWLEDGED_STATES,
    EventType,
    RoutedPartner,
    TraceEvent,
    current_deliveries,
    ordered,
)

SQLITE_FILE_NAME = "trace-store.sqlite3"
DEFAULT_LIST_LIMIT = 100


class TraceStore(ABC):
    """Referrals' events, idempotent by event id, with the queries the query API needs."""

    description: str
    """Where the store is, for logs (never credentials)."""

    @abstractmethod
    def append(self, event: TraceEvent) -> bool:
        """Store an event; False if an event with its id is already stored (a replay)."""

    @abstractmethod
    def append_many(self, events: Sequence[TraceEvent]) -> int:
        """Store several events in one transaction; returns how many were not stored before."""

    @abstractmethod
    def events_of(self, referral_id: str) -> list[TraceEvent]:
        """A referral's events, oldest first (empty if the referral is unknown)."""

    @abstractmethod
    def events_of_many(self, referral_ids: Sequence[str]) -> dict[str, list[TraceEvent]]:
        """The events of several referrals at once, each list oldest first."""

    @abstractmethod
    def referral_ids(
        self,
        *,
        partner: str | None = None,
        state: DeliveryState | None = None,
        overdue_at: datetime | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> list[str]:
        """Referrals, newest first, having one delivery that matches every filter given:
        delivered to `partner`, in `state`, unacknowledged past its deadline at `overdue_at`."""

    @abstractmethod
    def counts(self) -> tuple[int, int]:
        """How many events and how many referrals are stored."""

    @abstractmethod
    def reset(self) -> None:
        """Drop everything (before a rebuild from the topics)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""


def _referral_of(event: TraceEvent) -> str:
    return event.referral_id


def open_trace_store(url: str | None, data_dir: Path) -> TraceStore:
    """PostgreSQL for a `postgresql://` URL, otherwise SQLite in `data_dir`."""
    if not url:
        return SqliteTraceStore(data_dir / SQLITE_FILE_NAME)
    scheme = url.split(":", 1)[0].lower()
    if scheme in {"postgresql", "postgres"}:
        return PostgresTraceStore(url)
    raise ValueError(
        f"CTROUTE_TRACE_STORE_URL must be a postgresql:// URL, not a {scheme!r} one "
        "(leave it unset for the SQLite file in CTROUTE_DATA_DIR)"
    )


# --- the events as JSON ----------------------------------------------------------------------


def _time_text(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="microseconds") if moment else None


def _time_of(text: object) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None


def _state_of(text: object) -> DeliveryState | None:
    return DeliveryState(text) if isinstance(text, str) and text else None


def event_to_json(event: TraceEvent) -> str:
    """The stored form of an event: its fields, empty ones left out."""
    record: dict[str, Any] = {
        "event_id": event.event_id,
        "referral_id": event.referral_id,
        "event_type": event.event_type,
        "occurred_at": _time_text(event.occurred_at),
        "trace_id": event.trace_id,
        "source": event.source,
        "received_at": _time_text(event.received_at),
        "delivery_id": event.delivery_id,
        "partner": event.partner,
        "state": event.state.value if event.state else None,
        "previous_state": event.previous_state.value if event.previous_state else None,
        "priority": event.priority,
        "acknowledge_by": _time_text(event.acknowledge_by),
        "policy_version": event.policy_version,
        "rule_ids": list(event.rule_ids),
        "partners": [
            {
                "partner": p.partner,
                "priority": p.priority,
                "rule_ids": list(p.rule_ids),
                "delivery_id": p.delivery_id,
            }
            for p in event.partners
        ],
        "reason": event.reason,
        "outcome": event.outcome,
        "victim_ref": event.victim_ref,
    }
    return json.dumps({k: v for k, v in record.items() if v}, sort_keys=True)


def event_from_json(text: str) -> TraceEvent:
    """The event a stored record describes."""
    record: dict[str, Any] = json.loads(text)
    occurred_at = _time_of(record.get("occurred_at"))
    if occurred_at is None:
        raise ValueError(f"stored event {record.get('event_id')!r} has no time")
    return TraceEvent(
        event_id=record["event_id"],
        referral_id=record["referral_id"],
        event_type=record["event_type"],
        occurred_at=occurred_at,
        trace_id=record.get("trace_id", ""),
        source=record.get("source", ""),
        received_at=_time_of(record.get("received_at")),
        delivery_id=record.get("delivery_id", ""),
        partner=record.get("partner", ""),
        state=_state_of(record.get("state")),
        previous_state=_state_of(record.get("previous_state")),
        priority=record.get("priority", ""),
        acknowledge_by=_time_of(record.get("acknowledge_by")),
        policy_version=record.get("policy_version", ""),
        rule_ids=tuple(record.get("rule_ids", ())),
        partners=tuple(
            RoutedPartner(
                p.get("partner", ""),
                p.get("priority", ""),
                tuple(p.get("rule_ids", ())),
                p.get("delivery_id", ""),
            )
            for p in record.get("partners", ())
        ),
        reason=record.get("reason", ""),
        outcome=record.get("outcome", ""),
        victim_ref=record.get("victim_ref", ""),
    )


# --- one SQL implementation, two databases ---------------------------------------------------


class _Db(Protocol):
    """The little a store needs of a connection inside a transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


_TABLES = ("trace_deliveries", "trace_referrals", "trace_events")


def _schema(timestamp: str) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS trace_events ("
        " event_id TEXT PRIMARY KEY, referral_id TEXT NOT NULL, event_type TEXT NOT NULL,"
        f" occurred_at {timestamp} NOT NULL, trace_id TEXT NOT NULL, record TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS trace_events_by_referral"
        " ON trace_events (referral_id, occurred_at)",
        "CREATE TABLE IF NOT EXISTS trace_referrals ("
        f" referral_id TEXT PRIMARY KEY, listed_at {timestamp} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS trace_referrals_by_time"
        " ON trace_referrals (listed_at, referral_id)",
        "CREATE TABLE IF NOT EXISTS trace_deliveries ("
        " referral_id TEXT NOT NULL, delivery_id TEXT NOT NULL, partner TEXT NOT NULL,"
        f" state TEXT NOT NULL, acknowledge_by {timestamp},"
        " PRIMARY KEY (referral_id, delivery_id))",
        "CREATE INDEX IF NOT EXISTS trace_deliveries_by_partner ON trace_deliveries (partner)",
        "CREATE INDEX IF NOT EXISTS trace_deliveries_by_state ON trace_deliveries (state)",
    ]


class _SqlTraceStore(TraceStore):
    """The store's logic in portable SQL (`?` placeholders); subclasses supply the connection
    and how a time is written. One connection, one lock: the consumer thread writes while the
    gRPC threads read."""

    _timestamp_type: str

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @abstractmethod
    def _transaction(self, *, write: bool = False) -> AbstractContextManager[_Db]:
        """A transaction (holding the database's write lock from its start when `write`)."""

    @abstractmethod
    def _db_time(self, moment: datetime) -> Any:
        """A time as the database stores it."""

    def _create_schema(self) -> None:
        with self._transaction(write=True) as db:
            for statement in _schema(self._timestamp_type):
                db.execute(statement)

    def append(self, event: TraceEvent) -> bool:
        return self.append_many([event]) == 1

    def append_many(self, events: Sequence[TraceEvent]) -> int:
        """Store several events in one transaction (a consumed batch); returns how many were
        new. Each referral touched is folded once, after all its events are in."""
        added = 0
        touched: dict[str, None] = {}
        with self._transaction(write=True) as db:
            # By referral (stable: a referral's own events keep their order), so two writers in
            # PostgreSQL lock the referrals' rows in the same order and cannot deadlock.
            for event in sorted(events, key=_referral_of):
                if self._insert(db, event):
                    added += 1
                    touched[event.referral_id] = None
            for referral_id in touched:
                self._refresh(db, referral_id)
        return added

    def _insert(self, db: _Db, event: TraceEvent) -> bool:
        # The referral's row first: in PostgreSQL it locks the referral, so two writers of one
        # referral's events (a rebuild while the service runs) fold one after the other.
        db.execute(
            "INSERT INTO trace_referrals (referral_id, listed_at) VALUES (?, ?)"
            " ON CONFLICT (referral_id) DO UPDATE SET listed_at = trace_referrals.listed_at",
            (event.referral_id, self._db_time(event.received_at or event.occurred_at)),
        )
        added = db.execute(
            "INSERT INTO trace_events"
            " (event_id, referral_id, event_type, occurred_at, trace_id, record)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
            (
                event.event_id,
                event.referral_id,
                event.event_type,
                self._db_time(event.occurred_at),
                event.trace_id,
                event_to_json(event),
            ),
        )
        return added == 1

    def _refresh(self, db: _Db, referral_id: str) -> None:
        """Recompute the referral's derived rows from all its events."""
        events = self._read_events(db, [referral_id]).get(referral_id, [])
        submitted = [e for e in events if e.event_type == EventType.SUBMITTED and e.received_at]
        listed_at = submitted[0].received_at if submitted else events[0].occurred_at
        assert listed_at is not None
        db.execute(
            "UPDATE trace_referrals SET listed_at = ? WHERE referral_id = ?",
            (self._db_time(listed_at), referral_id),
        )
        db.execute("DELETE FROM trace_deliveries WHERE referral_id = ?", (referral_id,))
        for delivery in current_deliveries(events):
            db.execute(
                "INSERT INTO trace_deliveries"
                " (referral_id, delivery_id, partner, state, acknowledge_by)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    referral_id,
                    delivery.delivery_id,
                    delivery.partner,
                    delivery.state.value,
                    self._db_time(delivery.acknowledge_by) if delivery.acknowledge_by else None,
                ),
            )

    def _read_events(self, db: _Db, referral_ids: Sequence[str]) -> dict[str, list[TraceEvent]]:
        found: dict[str, list[TraceEvent]] = {}
        if not referral_ids:
            return found
        marks = ", ".join("?" for _ in referral_ids)
        rows = db.query(
            f"SELECT record FROM trace_events WHERE referral_id IN ({marks})",  # noqa: S608 - only placeholders
            list(referral_ids),
        )
        for (record,) in rows:
            event = event_from_json(record)
            found.setdefault(event.referral_id, []).append(event)
        return {referral_id: ordered(events) for referral_id, events in found.items()}

    def events_of(self, referral_id: str) -> list[TraceEvent]:
        return self.events_of_many([referral_id]).get(referral_id, [])

    def events_of_many(self, referral_ids: Sequence[str]) -> dict[str, list[TraceEvent]]:
        with self._transaction() as db:
            return self._read_events(db, referral_ids)

    def referral_ids(
        self,
        *,
        partner: str | None = None,
        state: DeliveryState | None = None,
        overdue_at: datetime | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
    ) -> list[str]:
        conditions: list[str] = []
        params: list[Any] = []
        if partner:
            conditions.append("d.partner = ?")
            params.append(partner)
        if state is not None:
            conditions.append("d.state = ?")
            params.append(state.value)
        if overdue_at is not None:
            waiting = sorted(s.value for s in UNACKNOWLEDGED_STATES)
            conditions.append(
                f"d.state IN ({', '.join('?' for _ in waiting)})"
                " AND d.acknowledge_by IS NOT NULL AND d.acknowledge_by < ?"
            )
            params += [*waiting, self._db_time(overdue_at)]
        where = ""
        if conditions:
            matches = " AND ".join(conditions)
            where = (
                " WHERE EXISTS (SELECT 1 FROM trace_deliveries d"  # noqa: S608 - constant fragments
                f" WHERE d.referral_id = r.referral_id AND {matches})"
            )
        sql = (
            "SELECT r.referral_id FROM trace_referrals r"  # noqa: S608 - constant fragments only
            + where
            + " ORDER BY r.listed_at DESC, r.referral_id DESC LIMIT ?"
        )
        with self._transaction() as db:
            rows = db.query(sql, [*params, max(0, limit)])
        return [row[0] for row in rows]

    def counts(self) -> tuple[int, int]:
        with self._transaction() as db:
            (events,) = db.query("SELECT COUNT(*) FROM trace_events")[0]
            (referrals,) = db.query("SELECT COUNT(*) FROM trace_referrals")[0]
        return int(events), int(referrals)

    def reset(self) -> None:
        with self._transaction(write=True) as db:
            for table in _TABLES:
                db.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _schema(self._timestamp_type):
                db.execute(statement)


# --- SQLite ----------------------------------------------------------------------------------


class _SqliteDb:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._connection.execute(sql, tuple(params)).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._connection.execute(sql, tuple(params)).fetchall())


class SqliteTraceStore(_SqlTraceStore):
    """The trace store in one SQLite file (WAL, so a rebuild can run beside the service)."""

    _timestamp_type = "TEXT"

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.description = f"SQLite {path.name}"
        self._connection = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._create_schema()

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[_Db]:
        with self._lock:
            # IMMEDIATE takes the write lock at once: a fold reads what no other writer changes.
            self._connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteDb(self._connection)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _db_time(self, moment: datetime) -> Any:
        # One fixed format in UTC, so text order is time order.
        return _time_text(moment)

    def close(self) -> None:
        with self._lock:
            self._connection.close()


# --- PostgreSQL ------------------------------------------------------------------------------


class _PostgresDb:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = self._connection.execute(_pg(sql), list(params))
        return cursor.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._connection.execute(_pg(sql), list(params)).fetchall())


def _pg(sql: str) -> str:
    """Portable `?` placeholders in psycopg's style (no statement here contains a literal ?)."""
    return sql.replace("?", "%s")


class PostgresTraceStore(_SqlTraceStore):
    """The trace store in a PostgreSQL database; reconnects after the server went away."""

    _timestamp_type = "TIMESTAMPTZ"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._connection = self._connect()
        info = self._connection.info
        self.description = f"PostgreSQL {info.host}:{info.port}/{info.dbname}"
        self._create_schema()

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._url, autocommit=True, connect_timeout=10)

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[_Db]:
        # Writers serialize per referral on its trace_referrals row (see `append`).
        with self._lock:
            if self._connection.closed or self._connection.broken:
                self._connection = self._connect()
            with self._connection.transaction():
                yield _PostgresDb(self._connection)

    def _db_time(self, moment: datetime) -> Any:
        return moment.astimezone(UTC)

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def replay(store: TraceStore, events: Iterable[TraceEvent]) -> int:
    """Append events in order; how many were new."""
    return sum(1 for event in events if store.append(event))
