"""Signed identity tokens: only the named system's own key, for this audience, in time."""

from __future__ import annotations

import pytest

from plumbing.tokens import (
    PARTNER_API_AUDIENCE,
    InvalidToken,
    TokenVerifier,
    issue_token,
    new_signing_key,
)

KEY = new_signing_key()
VERIFIER = TokenVerifier({"hsi-tipline": KEY.public_key()})


def test_a_token_signed_with_the_systems_key_proves_the_system() -> None:
    assert VERIFIER.verify(issue_token("hsi-tipline", KEY)) == "hsi-tipline"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (issue_token("hsi-tipline", new_signing_key()), "bad signature"),
        (issue_token("nht-hotline", KEY), "not registered"),
        (issue_token("hsi-tipline", KEY, audience=PARTNER_API_AUDIENCE), "bad signature"),
        (issue_token("hsi-tipline", KEY, now=0), "expired"),
        ("a.b.c", "malformed"),
        ("", "malformed"),
        ("x" * 5000, "malformed"),
    ],
)
def test_anything_else_is_refused_with_a_reason(token: str, reason: str) -> None:
    with pytest.raises(InvalidToken, match=reason):
        VERIFIER.verify(token)


def test_a_tampered_payload_breaks_the_signature() -> None:
    token = issue_token("hsi-tipline", KEY, lifetime_s=60)
    payload, signature = token.split(".")
    longer = issue_token("hsi-tipline", KEY, lifetime_s=10**6).split(".")[0]

    assert payload != longer
    with pytest.raises(InvalidToken, match="bad signature"):
        VERIFIER.verify(f"{longer}.{signature}")
