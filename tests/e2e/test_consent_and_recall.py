"""A victim's consent decisions, recorded in victim services with `refctl consent`, govern every
later release of the victim's identity, on the real broker.

The victim's name is a canary: whether it reached a partner is read from the raw bytes of the
partner's Kafka record, not from the decoded message, so no encoding can hide a leak.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2, referral_pb2
from plumbing import topics
from tests.e2e.system import RunningSystem
from tests.kafka_reading import LandedRecord, read_all, read_until

pytestmark = pytest.mark.broker

K = delivery_pb2
S = lifecycle_pb2
SOURCE = "nht-hotline"


def _referral(tag: str, name: str, narrative: str) -> referral_pb2.Referral:
    """A hotline call: a Mexican adult in Texas, who consented to law-enforcement contact."""
    now = datetime.now(UTC)
    referral = referral_pb2.Referral(
        source=SOURCE, source_reference=f"consent-{tag}", narrative=narrative
    )
    referral.indicators.append(referral_pb2.INDICATOR_SEX_TRAFFICKING)
    victim = referral.victims.add(
        victim_ref="v1", full_name=name, age=30, nationality="MX", us_state="TX"
    )
    consent = victim.consents.add(scope=referral_pb2.CONSENT_SCOPE_LAW_ENFORCEMENT_CONTACT)
    consent.granted_at.FromDatetime(now - timedelta(hours=1))
    consent.expires_at.FromDatetime(now + timedelta(days=30))
    return referral


def _refctl(system: RunningSystem, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "refctl",
            "consent",
            *args,
            "--address",
            system.victim_services_grpc_address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _inbox(
    system: RunningSystem, partners: list[str], referral_id: str, kind: int, count: int = 1
) -> list[LandedRecord]:
    return read_until(
        system.bootstrap_servers,
        [topics.inbox(p) for p in partners],
        keep=lambda r: r.key == referral_id and r.event.kind == kind,  # type: ignore[attr-defined]
        want=lambda kept: len(kept) >= count,
    )


def _by_partner(records: list[LandedRecord]) -> dict[str, LandedRecord]:
    return {r.event.partner: r for r in records}  # type: ignore[attr-defined]


def test_consent_withdrawal_recalls_the_identity_and_immigration_consent_reaches_uscis(
    running_system: RunningSystem,
) -> None:
    tag = uuid.uuid4().hex[:12]
    name = f"CANARY-VICTIM-{tag}"
    amended_narrative = f"CANARY-AMENDED-{tag}"
    referral = _referral(tag, name, f"CANARY-NARRATIVE-{tag}")
    referral_id = (
        running_system.intake()
        .SubmitReferral(intake_pb2.SubmitReferralRequest(referral=referral), timeout=15)
        .referral_id
    )

    # HSI (rule R1) receives the identity on the victim's consent; the Victim Assistance Program
    # (R7) receives it by its role.
    originals = _by_partner(
        _inbox(running_system, ["hsi", "hsi-vap"], referral_id, K.DELIVERY_KIND_NEW, 2)
    )
    assert name.encode() in originals["hsi"].raw_value
    assert name.encode() in originals["hsi-vap"].raw_value

    # Victim services opens a case and assigns a specialist at once: ACKNOWLEDGED, then ACCEPTED.
    vap_delivery = originals["hsi-vap"].event.delivery_id  # type: ignore[attr-defined]
    changes = read_until(
        running_system.bootstrap_servers,
        [topics.LIFECYCLE],
        keep=lambda r: (
            isinstance(r.event, S.DeliveryStatusChanged) and r.event.delivery_id == vap_delivery
        ),
        want=lambda kept: len(kept) >= 2,
    )
    assert [(c.event.previous_state, c.event.state) for c in changes] == [  # type: ignore[attr-defined]
        (S.DELIVERY_STATE_DELIVERED, S.DELIVERY_STATE_ACKNOWLEDGED),
        (S.DELIVERY_STATE_ACKNOWLEDGED, S.DELIVERY_STATE_ACCEPTED),
    ]

    # An unknown victim is refused by victim services, with the reason.
    unknown = _refctl(running_system, "withdraw", referral_id, "v9", "LAW_ENFORCEMENT_CONTACT")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr

    # The victim withdraws consent to law-enforcement contact: HSI is asked to destroy it.
    withdrawn = _refctl(running_system, "withdraw", referral_id, "v1", "LAW_ENFORCEMENT_CONTACT")
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert "LAW_ENFORCEMENT_CONTACT consent withdrawn" in withdrawn.stdout
    (recall,) = _inbox(running_system, ["hsi"], referral_id, K.DELIVERY_KIND_RECALL)
    assert recall.event.recalled_victim_ref == "v1"  # type: ignore[attr-defined]
    assert name.encode() not in recall.raw_value, "a recall names the victim by reference only"
    recalled = recall.event.referral  # type: ignore[attr-defined]
    assert recalled.ListFields() == [
        (recalled.DESCRIPTOR.fields_by_name["referral_id"], referral_id)
    ]

    # A later amendment no longer carries the identity to HSI; the program still receives it.
    amended = referral_pb2.Referral()
    amended.CopyFrom(referral)
    amended.narrative = amended_narrative
    running_system.intake().AmendReferral(
        intake_pb2.AmendReferralRequest(
            referral_id=referral_id, referral=amended, reason="the caller added details"
        ),
        timeout=15,
    )
    amendments = _by_partner(
        _inbox(running_system, ["hsi", "hsi-vap"], referral_id, K.DELIVERY_KIND_AMENDMENT, 2)
    )
    assert name.encode() not in amendments["hsi"].raw_value
    assert amended_narrative.encode() in amendments["hsi"].raw_value
    assert name.encode() in amendments["hsi-vap"].raw_value
    (le_consent,) = amendments["hsi-vap"].event.referral.victims[0].consents  # type: ignore[attr-defined]
    assert le_consent.HasField("withdrawn_at"), "the program sees the consent as withdrawn"

    # Consent to immigration-relief screening, for a victim who is not a US national: USCIS (R9)
    # receives the referral, with the identity that consent releases to it.
    expires = (datetime.now(UTC) + timedelta(days=90)).isoformat()
    granted = _refctl(
        running_system, "grant", referral_id, "v1", "IMMIGRATION_RELIEF", "--expires", expires
    )
    assert granted.returncode == 0, granted.stderr
    (uscis,) = _inbox(running_system, ["uscis"], referral_id, K.DELIVERY_KIND_NEW)
    assert name.encode() in uscis.raw_value
    assert amended_narrative.encode() not in uscis.raw_value, "USCIS never gets the narrative"

    # The source withdraws the referral. Its notices follow the grant's deliveries on the same
    # partition, so once they have landed everything the grant caused has landed too.
    running_system.intake().WithdrawReferral(
        intake_pb2.WithdrawReferralRequest(
            referral_id=referral_id, source=SOURCE, reason="test complete"
        ),
        timeout=15,
    )
    _inbox(running_system, ["hsi", "hsi-vap", "uscis"], referral_id, K.DELIVERY_KIND_WITHDRAWAL, 3)
    landed = read_all(
        running_system.bootstrap_servers,
        [topics.inbox(p) for p in ("hsi", "hsi-vap", "uscis")],
        keep=lambda r: r.key == referral_id,
    )
    kinds: dict[str, list[int]] = {}
    for record in landed:
        kinds.setdefault(record.event.partner, []).append(record.event.kind)  # type: ignore[attr-defined]
    # The grant re-delivered nothing to partners that already held the referral, and the
    # program, holding the identity by its role, was never asked to destroy it.
    assert kinds == {
        "hsi": [
            K.DELIVERY_KIND_NEW,
            K.DELIVERY_KIND_RECALL,
            K.DELIVERY_KIND_AMENDMENT,
            K.DELIVERY_KIND_WITHDRAWAL,
        ],
        "hsi-vap": [K.DELIVERY_KIND_NEW, K.DELIVERY_KIND_AMENDMENT, K.DELIVERY_KIND_WITHDRAWAL],
        "uscis": [K.DELIVERY_KIND_NEW, K.DELIVERY_KIND_WITHDRAWAL],
    }
