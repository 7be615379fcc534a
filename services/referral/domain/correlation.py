"""Correlation: referrals that share a strong identifier corroborate each other.

Identifiers are normalised (so "+1 (410) 555-0100" and "14105550100" match) and kept only as
keyed fingerprints (HMAC-SHA-256), so the correlation index holds no identifier in clear. A
partner learns how many other referrals corroborate one it received, and which of those it
received itself — never anything about the others.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class IdentifierKind(StrEnum):
    """The kinds of identifier strong enough to link two referrals."""

    PHONE = "phone"
    EMAIL = "email"
    VESSEL_IMO = "vessel-imo"
    PASSPORT = "passport"
    PRODUCER = "producer"


@dataclass(frozen=True)
class StrongIdentifier:
    """One identifier found in a referral, before normalisation."""

    kind: IdentifierKind
    value: str


_NOT_DIGIT = re.compile(r"\D")
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_COMPANY_SUFFIXES = frozenset(
    {"co", "company", "corp", "corporation", "inc", "llc", "ltd", "limited"}
)


def normalise(identifier: StrongIdentifier) -> str | None:
    """The canonical form of an identifier, or None when too weak to link on."""
    value = identifier.value.strip()
    if identifier.kind is IdentifierKind.PHONE:
        digits = _NOT_DIGIT.sub("", value)
        if len(digits) == 11 and digits.startswith("1"):
            digits = digits[1:]  # North American numbers with and without the country code
        return digits if len(digits) >= 7 else None
    if identifier.kind is IdentifierKind.EMAIL:
        return value.lower() if "@" in value else None
    if identifier.kind is IdentifierKind.PRODUCER:
        words = [w for w in _NOT_WORD.split(value.lower()) if w and w not in _COMPANY_SUFFIXES]
        return " ".join(words) or None
    compact = _NOT_WORD.sub("", value.lower())
    return compact or None


def fingerprints(identifiers: Iterable[StrongIdentifier], key: bytes) -> frozenset[str]:
    """Keyed fingerprints of the usable identifiers, one per kind and canonical value."""
    found = set()
    for identifier in identifiers:
        canonical = normalise(identifier)
        if canonical is not None:
            message = f"{identifier.kind.value}:{canonical}".encode()
            found.add(hmac.new(key, message, hashlib.sha256).hexdigest()[:32])
    return frozenset(found)


@dataclass(frozen=True)
class PartnerCorroboration:
    """What one partner is told about the referrals corroborating a new one."""

    corroborating_referrals: int
    referral_ids_you_received: tuple[str, ...]


def corroboration_for(
    partner: str, corroborating: Iterable[str], recipients_of: dict[str, frozenset[str]]
) -> PartnerCorroboration:
    """The partner's view: the count, and only the corroborating referrals it received."""
    others = sorted(set(corroborating))
    return PartnerCorroboration(
        corroborating_referrals=len(others),
        referral_ids_you_received=tuple(
            r for r in others if partner in recipients_of.get(r, frozenset())
        ),
    )
