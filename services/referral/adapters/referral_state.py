"""The router's memory of a referral as bytes, and the protobuf side of consent changes.

The state is stored as JSON in a changelog-backed table. JSON rather than a contract message:
the state is the router's private bookkeeping, not an event other services read, and a version
number lets a later router read what an earlier one wrote. The referral's content is kept as the
serialized ``Referral`` (base64 inside the JSON); the changelog topic thus holds the same content
the submitted topic already does, with the same sensitivity, and nothing more.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from ctroute.referral.v1 import lifecycle_pb2, referral_pb2
from referral.domain.facts import ConsentFact, ConsentScope, Priority, ReleaseBasis
from referral.domain.followups import (
    ConsentChange,
    Holding,
    ReferralState,
    apply_consent_changes,
    changes_for,
)
from referral.domain.routing import VictimRelease

FORMAT_VERSION = 1
_NO_TIME = datetime.min.replace(tzinfo=UTC)


class StateFormatError(ValueError):
    """Stored state this router cannot read (a newer format, or damaged bytes)."""


# --- encoding -------------------------------------------------------------------------------


def encode_state(state: ReferralState) -> bytes:
    """The state as compact, sorted JSON."""
    document = {
        "v": FORMAT_VERSION,
        "content": base64.b64encode(state.content).decode("ascii"),
        "withdrawn": state.withdrawn,
        "holdings": [_holding_json(h) for h in state.holdings],
        "consent_changes": [_change_json(c) for c in state.consent_changes],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def decode_state(data: bytes) -> ReferralState:
    """The state encoded by ``encode_state``."""
    try:
        document = json.loads(data)
        if document.get("v") != FORMAT_VERSION:
            raise StateFormatError(f"unknown state format {document.get('v')!r}")
        return ReferralState(
            content=base64.b64decode(document["content"]),
            holdings=tuple(_holding(h) for h in document["holdings"]),
            consent_changes=tuple(_change(c) for c in document["consent_changes"]),
            withdrawn=bool(document["withdrawn"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, StateFormatError):
            raise
        raise StateFormatError(f"unreadable referral state: {type(error).__name__}") from error


def _holding_json(holding: Holding) -> dict[str, Any]:
    return {
        "partner": holding.partner,
        "priority": holding.priority.value,
        "rule_ids": list(holding.rule_ids),
        "identities": [[v.victim_ref, v.basis.value] for v in holding.identities],
        "declined": holding.declined,
        "substitute": holding.substitute,
    }


def _holding(data: dict[str, Any]) -> Holding:
    return Holding(
        partner=str(data["partner"]),
        priority=Priority(data["priority"]),
        rule_ids=tuple(str(r) for r in data["rule_ids"]),
        identities=tuple(VictimRelease(str(ref), ReleaseBasis(b)) for ref, b in data["identities"]),
        declined=bool(data["declined"]),
        substitute=bool(data["substitute"]),
    )


def _change_json(change: ConsentChange) -> dict[str, Any]:
    return {
        "victim_ref": change.victim_ref,
        "scope": change.scope.value,
        "at": change.at.isoformat(),
        "withdrawn": change.withdrawn,
        "expires_at": change.expires_at.isoformat() if change.expires_at else None,
    }


def _change(data: dict[str, Any]) -> ConsentChange:
    expires = data["expires_at"]
    return ConsentChange(
        victim_ref=str(data["victim_ref"]),
        scope=ConsentScope(data["scope"]),
        at=datetime.fromisoformat(data["at"]),
        withdrawn=bool(data["withdrawn"]),
        expires_at=datetime.fromisoformat(expires) if expires else None,
    )


# --- protobuf -------------------------------------------------------------------------------


def _scope(value: referral_pb2.ConsentScope.ValueType) -> ConsentScope:
    return ConsentScope(referral_pb2.ConsentScope.Name(value).removeprefix("CONSENT_SCOPE_"))


def _scope_value(scope: ConsentScope) -> referral_pb2.ConsentScope.ValueType:
    return referral_pb2.ConsentScope.Value(f"CONSENT_SCOPE_{scope.value}")


def consent_granted(event: lifecycle_pb2.ConsentGranted) -> ConsentChange:
    """The change a ConsentGranted event records. A grant without a time counts from the
    earliest instant, so it can neither outrank a later withdrawal nor a later consent."""
    consent = event.consent
    return ConsentChange(
        victim_ref=event.victim_ref,
        scope=_scope(consent.scope),
        at=consent.granted_at.ToDatetime(tzinfo=UTC)
        if consent.HasField("granted_at")
        else _NO_TIME,
        expires_at=(
            consent.expires_at.ToDatetime(tzinfo=UTC) if consent.HasField("expires_at") else None
        ),
    )


def consent_withdrawn(event: lifecycle_pb2.ConsentWithdrawn, received: datetime) -> ConsentChange:
    """The change a ConsentWithdrawn event records; without a time, when it was received."""
    at = event.withdrawn_at.ToDatetime(tzinfo=UTC) if event.HasField("withdrawn_at") else received
    return ConsentChange(
        victim_ref=event.victim_ref, scope=_scope(event.scope), at=at, withdrawn=True
    )


def _fact(consent: referral_pb2.Consent) -> ConsentFact:
    def at(name: str) -> datetime | None:
        if not consent.HasField(name):  # type: ignore[arg-type]
            return None
        value: datetime = getattr(consent, name).ToDatetime(tzinfo=UTC)
        return value

    return ConsentFact(
        _scope(consent.scope), at("granted_at") or _NO_TIME, at("expires_at"), at("withdrawn_at")
    )


def _proto(fact: ConsentFact) -> referral_pb2.Consent:
    consent = referral_pb2.Consent(scope=_scope_value(fact.scope))
    if fact.granted_at != _NO_TIME:
        consent.granted_at.FromDatetime(fact.granted_at)
    if fact.expires_at is not None:
        consent.expires_at.FromDatetime(fact.expires_at)
    if fact.withdrawn_at is not None:
        consent.withdrawn_at.FromDatetime(fact.withdrawn_at)
    return consent


def effective_referral(state: ReferralState) -> referral_pb2.Referral:
    """The source's content with the recorded consent changes applied to its victims.

    Partners' copies are made from it, so a victim-services partner sees the consents as they
    stand (a withdrawn one carries its withdrawal time), and routing decides on them.
    """
    referral = referral_pb2.Referral.FromString(state.content)
    for victim in referral.victims:
        changes = changes_for(victim.victim_ref, state.consent_changes)
        if not changes:
            continue
        known = [c for c in victim.consents if c.scope != referral_pb2.CONSENT_SCOPE_UNSPECIFIED]
        updated = apply_consent_changes([_fact(c) for c in known], changes)
        del victim.consents[:]
        victim.consents.extend(_proto(fact) for fact in updated)
    return referral
