"""The router's memory of a referral survives its JSON encoding, and consent changes recorded
after submission are applied to the stored content."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ctroute.referral.v1 import lifecycle_pb2, referral_pb2
from referral.adapters.referral_state import (
    StateFormatError,
    consent_granted,
    consent_withdrawn,
    decode_state,
    effective_referral,
    encode_state,
)
from referral.domain.facts import ConsentScope, Priority, ReleaseBasis
from referral.domain.followups import ConsentChange, Holding, ReferralState
from referral.domain.routing import VictimRelease

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _referral() -> referral_pb2.Referral:
    referral = referral_pb2.Referral(referral_id="r1", source="nht-hotline", narrative="x")
    victim = referral.victims.add(victim_ref="v1", full_name="someone")
    consent = victim.consents.add(scope=referral_pb2.CONSENT_SCOPE_LAW_ENFORCEMENT_CONTACT)
    consent.granted_at.FromDatetime(NOW - 2 * HOUR)
    consent.expires_at.FromDatetime(NOW + HOUR)
    referral.victims.add(victim_ref="v2", full_name="someone else")
    return referral


def test_the_state_round_trips() -> None:
    state = ReferralState(
        content=_referral().SerializeToString(),
        holdings=(
            Holding(
                "hsi",
                Priority.URGENT,
                ("R1", "R3"),
                (VictimRelease("v1", ReleaseBasis.CONSENT),),
                declined=True,
            ),
            Holding("ccht", Priority.HIGH, ("DECLINE-REROUTE",), substitute=True),
        ),
        consent_changes=(
            ConsentChange("v1", ConsentScope.IMMIGRATION_RELIEF, NOW, expires_at=NOW + HOUR),
            ConsentChange("v1", ConsentScope.LAW_ENFORCEMENT_CONTACT, NOW, withdrawn=True),
        ),
        withdrawn=True,
    )
    assert decode_state(encode_state(state)) == state


@pytest.mark.parametrize("data", [b"not json", b'{"v": 99}', b'{"v": 1}'])
def test_unreadable_state_is_refused(data: bytes) -> None:
    with pytest.raises(StateFormatError):
        decode_state(data)


def test_consent_changes_apply_to_their_victim_only() -> None:
    granted = lifecycle_pb2.ConsentGranted(referral_id="r1", victim_ref="v1")
    granted.consent.scope = referral_pb2.CONSENT_SCOPE_IMMIGRATION_RELIEF
    granted.consent.granted_at.FromDatetime(NOW)
    granted.consent.expires_at.FromDatetime(NOW + 24 * HOUR)
    withdrawn = lifecycle_pb2.ConsentWithdrawn(
        referral_id="r1", victim_ref="v1", scope=referral_pb2.CONSENT_SCOPE_LAW_ENFORCEMENT_CONTACT
    )
    withdrawn.withdrawn_at.FromDatetime(NOW - HOUR)
    state = ReferralState(
        _referral().SerializeToString(),
        consent_changes=(consent_granted(granted), consent_withdrawn(withdrawn, NOW)),
    )
    effective = effective_referral(state)
    le, ir = effective.victims[0].consents
    assert le.scope == referral_pb2.CONSENT_SCOPE_LAW_ENFORCEMENT_CONTACT
    assert le.withdrawn_at.ToDatetime(tzinfo=UTC) == NOW - HOUR
    assert ir.scope == referral_pb2.CONSENT_SCOPE_IMMIGRATION_RELIEF
    assert ir.granted_at.ToDatetime(tzinfo=UTC) == NOW
    assert not ir.HasField("withdrawn_at")
    assert list(effective.victims[1].consents) == []
    # The stored content itself is untouched: an amendment replaces it, the changes stay.
    assert referral_pb2.Referral.FromString(state.content) == _referral()


def test_a_withdrawal_without_a_time_counts_from_its_receipt() -> None:
    event = lifecycle_pb2.ConsentWithdrawn(
        referral_id="r1", victim_ref="v1", scope=referral_pb2.CONSENT_SCOPE_IMMIGRATION_RELIEF
    )
    assert consent_withdrawn(event, NOW).at == NOW
