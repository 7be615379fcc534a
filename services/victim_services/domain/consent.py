"""A victim's consent decisions as victim services records them: granted, scoped, expiring,
withdrawn.

Victim services is where a victim specialist meets the victim, so it is where consent is taken
and withdrawn. Federal victim-confidentiality rules (VAWA, FVPSA, VOCA) only recognise informed,
written, *time-limited* consent, per purpose; so a grant names one scope and must expire, and a
withdrawal takes effect for that scope at once. The router honours the events built from these
records: it releases the victim's identity only on consent in force, and recalls it from
partners that received it on a consent the victim withdrew.

Pure: no protobuf, gRPC, Kafka or database. The API adapter converts requests, the store keeps
the records, the publisher turns ``ConsentGrant`` and ``ConsentWithdrawal`` into contract events.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

CLOCK_SKEW = timedelta(minutes=5)
"""How far in the future a stated time may lie: the specialist's device clock may run ahead."""

_IDS = uuid.UUID("6d3f1c0a-8f7e-4b1e-9a52-2c4b7d9e0f13")


class ConsentScope(StrEnum):
    """The purpose a consent covers (the contract's ConsentScope without its prefix)."""

    LAW_ENFORCEMENT_CONTACT = "LAW_ENFORCEMENT_CONTACT"
    VICTIM_SERVICES_REFERRAL = "VICTIM_SERVICES_REFERRAL"
    IMMIGRATION_RELIEF = "IMMIGRATION_RELIEF"


class ConsentStatus(StrEnum):
    """Where a recorded consent stands at a moment."""

    IN_FORCE = "IN_FORCE"
    NOT_YET_IN_FORCE = "NOT_YET_IN_FORCE"
    EXPIRED = "EXPIRED"
    WITHDRAWN = "WITHDRAWN"


class ConsentRefused(Exception):
    """A consent decision victim services cannot record; the reason names no person.

    ``unknown_victim`` distinguishes a victim victim services has no case for (the caller named
    the wrong referral or victim) from a grant that is wrong in itself.
    """

    def __init__(self, reason: str, *, unknown_victim: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unknown_victim = unknown_victim


@dataclass(frozen=True, slots=True)
class ConsentGrant:
    """A victim consented to one purpose until ``expires_at``."""

    referral_id: str
    victim_ref: str
    scope: ConsentScope
    granted_at: datetime
    expires_at: datetime

    @property
    def event_id(self) -> str:
        """Stable: recording the same grant twice publishes one event, twice."""
        return _event_id("granted", self.referral_id, self.victim_ref, self.scope, self.granted_at)


@dataclass(frozen=True, slots=True)
class ConsentWithdrawal:
    """A victim withdrew the consent of one scope at ``withdrawn_at``."""

    referral_id: str
    victim_ref: str
    scope: ConsentScope
    withdrawn_at: datetime

    @property
    def event_id(self) -> str:
        """Stable: recording the same withdrawal twice publishes one event, twice."""
        return _event_id(
            "withdrawn", self.referral_id, self.victim_ref, self.scope, self.withdrawn_at
        )


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """Victim services' record of one victim's consent for one scope: its latest state."""

    referral_id: str
    victim_ref: str
    scope: ConsentScope
    granted_at: datetime | None
    expires_at: datetime | None
    withdrawn_at: datetime | None = None

    @property
    def key(self) -> str:
        """The record's key: one record per referral, victim and scope."""
        return record_key(self.referral_id, self.victim_ref, self.scope)

    def status(self, now: datetime) -> ConsentStatus:
        """Where the consent stands at ``now``; a consent without an expiry is never in force."""
        if self.withdrawn_at is not None and self.withdrawn_at <= now:
            return ConsentStatus.WITHDRAWN
        if self.granted_at is None or now < self.granted_at:
            return ConsentStatus.NOT_YET_IN_FORCE
        if self.expires_at is None or now >= self.expires_at:
            return ConsentStatus.EXPIRED
        return ConsentStatus.IN_FORCE

    def as_record(self) -> dict[str, Any]:
        """The record as JSON-friendly data (ISO 8601 times)."""
        return {
            "referral_id": self.referral_id,
            "victim_ref": self.victim_ref,
            "scope": self.scope.value,
            "granted_at": _iso(self.granted_at),
            "expires_at": _iso(self.expires_at),
            "withdrawn_at": _iso(self.withdrawn_at),
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ConsentRecord:
        """The record stored by ``as_record``."""
        return cls(
            referral_id=str(data["referral_id"]),
            victim_ref=str(data["victim_ref"]),
            scope=ConsentScope(data["scope"]),
            granted_at=_time(data.get("granted_at")),
            expires_at=_time(data.get("expires_at")),
            withdrawn_at=_time(data.get("withdrawn_at")),
        )


def record_key(referral_id: str, victim_ref: str, scope: ConsentScope) -> str:
    """The key of the consent record of one referral, victim and scope."""
    return f"{referral_id}/{victim_ref}/{scope.value}"


def grant_consent(
    *,
    referral_id: str,
    victim_ref: str,
    scope: ConsentScope,
    expires_at: datetime,
    granted_at: datetime | None,
    known_victims: Iterable[str],
    now: datetime,
) -> ConsentGrant:
    """Check a grant and return it; raise ConsentRefused when it cannot be recorded.

    A grant is for a victim victim services has a case for, is given no later than now (within
    the clock skew), and expires after both its grant and now: a consent already lapsed would
    release nothing and only mislead the record.
    """
    _require_known(referral_id, victim_ref, known_victims)
    given = granted_at or now
    if given > now + CLOCK_SKEW:
        raise ConsentRefused("granted_at lies in the future; consent is recorded once given")
    if expires_at <= given:
        raise ConsentRefused("expires_at must be after granted_at")
    if expires_at <= now:
        raise ConsentRefused("expires_at has passed; a lapsed consent cannot be recorded")
    return ConsentGrant(referral_id, victim_ref, scope, given, expires_at)


def withdraw_consent(
    *,
    referral_id: str,
    victim_ref: str,
    scope: ConsentScope,
    withdrawn_at: datetime | None,
    known_victims: Iterable[str],
    now: datetime,
) -> ConsentWithdrawal:
    """Check a withdrawal and return it; raise ConsentRefused when it cannot be recorded.

    A withdrawal is always accepted for a known victim, even when no consent of the scope is on
    record here (the victim may have consented to the hotline, in the referral itself): a victim
    must never be stopped from withdrawing by a gap in the paperwork.
    """
    _require_known(referral_id, victim_ref, known_victims)
    at = withdrawn_at or now
    if at > now + CLOCK_SKEW:
        raise ConsentRefused("withdrawn_at lies in the future; record the withdrawal when made")
    return ConsentWithdrawal(referral_id, victim_ref, scope, at)


def after_grant(previous: ConsentRecord | None, grant: ConsentGrant) -> ConsentRecord:
    """The record once ``grant`` is recorded: the victim's newer word replaces an older one.

    An older grant or withdrawal is replaced; a withdrawal recorded later than this grant's time
    stays (the grant came in late, and the victim has withdrawn since).
    """
    if (
        previous is not None
        and previous.withdrawn_at is not None
        and previous.withdrawn_at >= grant.granted_at
    ):
        return previous
    return ConsentRecord(
        grant.referral_id, grant.victim_ref, grant.scope, grant.granted_at, grant.expires_at
    )


def after_withdrawal(
    previous: ConsentRecord | None, withdrawal: ConsentWithdrawal
) -> ConsentRecord:
    """The record once ``withdrawal`` is recorded; an earlier withdrawal time is kept."""
    if previous is None:
        return ConsentRecord(
            withdrawal.referral_id,
            withdrawal.victim_ref,
            withdrawal.scope,
            None,
            None,
            withdrawal.withdrawn_at,
        )
    at = withdrawal.withdrawn_at
    if previous.withdrawn_at is not None:
        at = min(at, previous.withdrawn_at)
    return ConsentRecord(
        previous.referral_id,
        previous.victim_ref,
        previous.scope,
        previous.granted_at,
        previous.expires_at,
        at,
    )


def _require_known(referral_id: str, victim_ref: str, known_victims: Iterable[str]) -> None:
    if victim_ref not in set(known_victims):
        raise ConsentRefused(
            f"victim services has no case for victim {victim_ref} of referral {referral_id}",
            unknown_victim=True,
        )


def _event_id(kind: str, referral_id: str, victim_ref: str, scope: str, at: datetime) -> str:
    parts = "\x1f".join((kind, referral_id, victim_ref, scope, at.isoformat()))
    return f"consent-{uuid.uuid5(_IDS, parts).hex[:20]}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: object) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None
