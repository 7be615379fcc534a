"""Every release to a partner and every status change lands in the hash-chained audit log, and
`refctl audit verify` proves it intact or names the tampered entry."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ctroute.referral.v1 import intake_pb2, referral_pb2
from tests.e2e.system import RunningSystem

pytestmark = pytest.mark.broker


def _verify(log: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refctl", "audit", "verify", "--log", str(log)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _entries_for(log: Path, referral_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(log) as db:
        return db.execute(
            "SELECT kind, body FROM audit WHERE referral_id = ? ORDER BY seq", (referral_id,)
        ).fetchall()


def test_releases_and_status_changes_are_chained_and_tampering_is_found(
    running_system: RunningSystem, tmp_path: Path
) -> None:
    request = intake_pb2.SubmitReferralRequest()
    request.referral.source = "hsi-tipline"
    request.referral.source_reference = f"audit-{uuid.uuid4().hex[:12]}"
    request.referral.indicators.append(referral_pb2.INDICATOR_SEX_TRAFFICKING)
    request.referral.victims.add(victim_ref="v1", age=15, full_name="Audit Canary Name")
    referral_id = running_system.intake().SubmitReferral(request, timeout=15).referral_id
    log = running_system.trace_dir.parent / "data" / "audit.sqlite3"

    deadline = time.monotonic() + 60
    while True:
        entries = _entries_for(log, referral_id) if log.exists() else []
        kinds = [kind for kind, _ in entries]
        if kinds.count("RELEASE") == 3 and kinds.count("DeliveryStatusChanged") >= 3:
            break
        assert time.monotonic() < deadline, f"audit entries so far: {kinds}"
        time.sleep(0.2)
    releases = [body for kind, body in entries if kind == "RELEASE"]
    assert any('"partner": "hsi"' in body and "MINOR_OVERRIDE" in body for body in releases)
    assert all("Audit Canary Name" not in body for _, body in entries)

    intact = _verify(log)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "audit chain intact" in intact.stdout

    tampered = tmp_path / "tampered.sqlite3"
    # A consistent copy of the live database (its recent writes may still be in the WAL file).
    with sqlite3.connect(log) as source, sqlite3.connect(tampered) as copy:
        source.backup(copy)
    with sqlite3.connect(tampered) as db:
        (seq,) = db.execute(
            "SELECT seq FROM audit WHERE referral_id = ? AND kind = 'RELEASE' LIMIT 1",
            (referral_id,),
        ).fetchone()
        db.execute(
            "UPDATE audit SET body = replace(body, '\"partner\": \"', '\"partner\": \"x') "
            "WHERE seq = ?",
            (seq,),
        )
        assert db.total_changes == 1
    broken = _verify(tampered)
    assert broken.returncode == 2
    assert f"BROKEN at entry {seq}" in broken.stdout
