"""Normalising and fingerprinting strong identifiers, and what a partner is told."""

from __future__ import annotations

import pytest

from referral.domain.correlation import (
    IdentifierKind,
    StrongIdentifier,
    corroboration_for,
    fingerprints,
    normalise,
)

KEY = b"test-key"


@pytest.mark.parametrize(
    ("kind", "first", "second"),
    [
        (IdentifierKind.PHONE, "+1 (410) 555-0100", "4105550100"),
        (IdentifierKind.EMAIL, "Someone@Example.org ", "someone@example.org"),
        (IdentifierKind.VESSEL_IMO, "IMO 9123456", "imo9123456"),
        (IdentifierKind.PRODUCER, "Demo Textile Works Co., Ltd.", "DEMO TEXTILE WORKS"),
    ],
)
def test_formats_of_one_identifier_share_a_fingerprint(
    kind: IdentifierKind, first: str, second: str
) -> None:
    assert fingerprints([StrongIdentifier(kind, first)], KEY) == fingerprints(
        [StrongIdentifier(kind, second)], KEY
    )


def test_kinds_and_keys_separate_fingerprints() -> None:
    phone = StrongIdentifier(IdentifierKind.PHONE, "4105550100")
    passport = StrongIdentifier(IdentifierKind.PASSPORT, "4105550100")
    assert fingerprints([phone], KEY) != fingerprints([passport], KEY)
    assert fingerprints([phone], KEY) != fingerprints([phone], b"another-key")


def test_fingerprints_hold_no_identifier_in_clear() -> None:
    (value,) = fingerprints([StrongIdentifier(IdentifierKind.PHONE, "4105550100")], KEY)
    assert "4105550100" not in value
    assert len(value) == 32


def test_weak_identifiers_link_nothing() -> None:
    assert normalise(StrongIdentifier(IdentifierKind.PHONE, "12-34")) is None
    assert normalise(StrongIdentifier(IdentifierKind.EMAIL, "not an address")) is None
    assert normalise(StrongIdentifier(IdentifierKind.PRODUCER, "Co., Ltd.")) is None


def test_a_partner_sees_only_the_corroborating_referrals_it_received() -> None:
    view = corroboration_for(
        "hsi",
        ["ref-b", "ref-a", "ref-c"],
        {"ref-a": frozenset({"hsi", "cbp"}), "ref-b": frozenset({"cbp"})},
    )
    assert view.corroborating_referrals == 3
    assert view.referral_ids_you_received == ("ref-a",)
