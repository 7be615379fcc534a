"""Translates a protobuf Referral into the routing facts the policy engine decides on.

The policy engine never sees protobuf; this adapter is the one place that knows both.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from ctroute.referral.v1 import referral_pb2
from referral.domain.correlation import IdentifierKind, StrongIdentifier
from referral.domain.facts import (
    ConsentFact,
    ConsentScope,
    Indicator,
    LocationKind,
    ReferralFacts,
    VictimFacts,
)

_IDENTITY_FIELDS = ("full_name", "date_of_birth", "phone", "email", "description")


def _indicator(value: referral_pb2.Indicator.ValueType) -> Indicator:
    return Indicator(referral_pb2.Indicator.Name(value).removeprefix("INDICATOR_"))


def _location_kind(value: referral_pb2.LocationKind.ValueType) -> LocationKind:
    return LocationKind(referral_pb2.LocationKind.Name(value).removeprefix("LOCATION_KIND_"))


def _timestamp(message: referral_pb2.Consent, field: str) -> datetime | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    value: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return value


def _consent(consent: referral_pb2.Consent) -> ConsentFact:
    granted_at = _timestamp(consent, "granted_at") or datetime.min.replace(tzinfo=UTC)
    return ConsentFact(
        scope=ConsentScope(
            referral_pb2.ConsentScope.Name(consent.scope).removeprefix("CONSENT_SCOPE_")
        ),
        granted_at=granted_at,
        expires_at=_timestamp(consent, "expires_at"),
        withdrawn_at=_timestamp(consent, "withdrawn_at"),
    )


def _has_identity(victim: referral_pb2.PotentialVictim) -> bool:
    return (
        any(getattr(victim, name) for name in _IDENTITY_FIELDS)
        or victim.HasField("home_address")
        or len(victim.documents) > 0
    )


def _victim(victim: referral_pb2.PotentialVictim) -> VictimFacts:
    return VictimFacts(
        victim_ref=victim.victim_ref,
        age=victim.age if victim.HasField("age") else None,
        date_of_birth=date.fromisoformat(victim.date_of_birth) if victim.date_of_birth else None,
        nationality=victim.nationality or None,
        us_state=victim.us_state or None,
        consents=tuple(
            _consent(c)
            for c in victim.consents
            if c.scope != referral_pb2.CONSENT_SCOPE_UNSPECIFIED
        ),
        has_identity=_has_identity(victim),
    )


def facts_from_referral(referral: referral_pb2.Referral) -> ReferralFacts:
    """The routing facts of a validated referral."""
    return ReferralFacts(
        referral_id=referral.referral_id,
        source=referral.source,
        indicators=frozenset(
            _indicator(i) for i in referral.indicators if i != referral_pb2.INDICATOR_UNSPECIFIED
        ),
        victims=tuple(_victim(v) for v in referral.victims),
        imminent_danger=referral.imminent_danger,
        location_kinds=frozenset(
            _location_kind(loc.kind)
            for loc in referral.locations
            if loc.kind != referral_pb2.LOCATION_KIND_UNSPECIFIED
        ),
        location_states=tuple(loc.us_state for loc in referral.locations if loc.us_state),
        vessel_involved=referral.HasField("vessel"),
        goods_destined_for_us=any(g.destined_for_us for g in referral.goods),
    )


def identifiers_of(referral: referral_pb2.Referral) -> list[StrongIdentifier]:
    """The strong identifiers a referral carries, for correlation with other referrals."""
    found: list[StrongIdentifier] = []
    for victim in referral.victims:
        if victim.phone:
            found.append(StrongIdentifier(IdentifierKind.PHONE, victim.phone))
        if victim.email:
            found.append(StrongIdentifier(IdentifierKind.EMAIL, victim.email))
        found += [
            StrongIdentifier(IdentifierKind.PASSPORT, f"{doc.issuing_country}:{doc.number}")
            for doc in victim.documents
            if doc.kind == referral_pb2.IDENTITY_DOCUMENT_KIND_PASSPORT and doc.number
        ]
    found += [
        StrongIdentifier(IdentifierKind.PHONE, suspect.phone)
        for suspect in referral.suspects
        if suspect.phone
    ]
    if referral.vessel.imo_number:
        found.append(StrongIdentifier(IdentifierKind.VESSEL_IMO, referral.vessel.imo_number))
    found += [
        StrongIdentifier(IdentifierKind.PRODUCER, goods.producer)
        for goods in referral.goods
        if goods.producer
    ]
    return found
