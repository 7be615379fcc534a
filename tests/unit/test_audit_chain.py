"""The audit chain names the first edited, inserted or deleted entry."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from referral.adapters.audit_log import AuditLog
from referral.domain.audit_chain import verify


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.sqlite3"
    log = AuditLog(path)
    for n in range(1, 6):
        log.append(f"evt-{n}", datetime(2026, 11, 28, tzinfo=UTC), "RELEASE", "ref-1", {"n": n})
    assert not log.append("evt-3", datetime.now(UTC), "RELEASE", "ref-1", {"n": 99})
    log.close()
    return path


def _verdict(path: Path):  # type: ignore[no-untyped-def]
    log = AuditLog(path)
    try:
        return verify(log.entries())
    finally:
        log.close()


def test_an_untouched_chain_is_intact(log_path: Path) -> None:
    verdict = _verdict(log_path)
    assert verdict.intact
    assert verdict.entries == 5


def test_an_edited_entry_is_pinpointed(log_path: Path) -> None:
    with sqlite3.connect(log_path) as db:
        db.execute("UPDATE audit SET body = '{\"n\": 30}' WHERE seq = 3")
    verdict = _verdict(log_path)
    assert not verdict.intact
    assert verdict.at_seq == 3
    assert "edited" in verdict.problem


def test_a_deleted_entry_is_pinpointed(log_path: Path) -> None:
    with sqlite3.connect(log_path) as db:
        db.execute("DELETE FROM audit WHERE seq = 2")
    verdict = _verdict(log_path)
    assert not verdict.intact
    assert verdict.at_seq == 3
    assert "entry 2 is missing" in verdict.problem


def test_an_inserted_entry_is_pinpointed(log_path: Path) -> None:
    with sqlite3.connect(log_path) as db:
        db.execute("UPDATE audit SET seq = -seq WHERE seq >= 4")
        db.execute("UPDATE audit SET seq = 1 - seq WHERE seq < 0")
        row = db.execute("SELECT * FROM audit WHERE seq = 3").fetchone()
        db.execute(
            "INSERT INTO audit VALUES (4, 'forged', ?, 'RELEASE', 'ref-1', '{}', ?, ?)",
            (row[2], row[7], "f" * 64),
        )
    verdict = _verdict(log_path)
    assert not verdict.intact
    assert verdict.at_seq == 4


def test_a_rehashed_forgery_still_breaks_the_link_to_the_next_entry(log_path: Path) -> None:
    """Editing an entry and fixing its own hash is caught by the entry after it."""
    from referral.domain.audit_chain import entry_hash

    with sqlite3.connect(log_path) as db:
        row = db.execute("SELECT * FROM audit WHERE seq = 2").fetchone()
        forged = entry_hash(2, row[1], row[2], row[3], row[4], {"n": 20}, row[6])
        db.execute("UPDATE audit SET body = '{\"n\": 20}', hash = ? WHERE seq = 2", (forged,))
    verdict = _verdict(log_path)
    assert not verdict.intact
    assert verdict.at_seq == 3
