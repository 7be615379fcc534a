"""Signed identity tokens: how a component system proves who it is to the gRPC intake.

Each component system holds its own Ed25519 private key; the intake holds only the public keys
(one file per system, `<system id>.pub`), so neither the intake nor another system can mint a
token for a system. A token is `<payload>.<signature>`, both base64url without padding; the
payload is JSON `{"sub": system id, "aud": audience, "exp": unix seconds}` and the signature
covers the audience-tagged payload. Tokens are short-lived: a client mints one per connection.

Errors name what is wrong with a token, never the token itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

INTAKE_AUDIENCE = "ctroute-intake"
PARTNER_API_AUDIENCE = "ctroute-partner-api"
DEFAULT_LIFETIME_S = 3600
_MAX_TOKEN_CHARS = 2048
_SYSTEM_ID = re.compile(r"^[a-z][a-z0-9-]{1,62}$")


class InvalidToken(Exception):
    """The token does not prove an identity; the message says why (without the token)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed_bytes(audience: str, payload: str) -> bytes:
    return f"ctroute-token-v1.{audience}.{payload}".encode()


def issue_token(
    system: str,
    key: Ed25519PrivateKey,
    *,
    audience: str = INTAKE_AUDIENCE,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    now: float | None = None,
) -> str:
    """A token asserting `system`, signed with the system's private key."""
    issued = time.time() if now is None else now
    claims = {"sub": system, "aud": audience, "exp": int(issued) + lifetime_s}
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{payload}.{_b64(key.sign(_signed_bytes(audience, payload)))}"


class TokenVerifier:
    """Checks tokens against the registered systems' public keys."""

    def __init__(
        self, public_keys: Mapping[str, Ed25519PublicKey], *, audience: str = INTAKE_AUDIENCE
    ) -> None:
        self._keys = dict(public_keys)
        self._audience = audience

    @property
    def systems(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, token: str, *, now: float | None = None) -> str:
        """The system id the token proves; raises InvalidToken otherwise."""
        if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
            raise InvalidToken("malformed token")
        payload, signature = token.split(".")
        try:
            claims = json.loads(_unb64(payload))
            raw_signature = _unb64(signature)
        except (ValueError, binascii.Error) as error:
            raise InvalidToken("malformed token") from error
        if not isinstance(claims, dict):
            raise InvalidToken("malformed token")
        system, audience, expires = claims.get("sub"), claims.get("aud"), claims.get("exp")
        if not isinstance(system, str) or not isinstance(expires, int):
            raise InvalidToken("malformed token")
        key = self._keys.get(system)
        if key is None:
            raise InvalidToken("the token names a system that is not registered")
        try:
            key.verify(raw_signature, _signed_bytes(self._audience, payload))
        except InvalidSignature as error:
            raise InvalidToken("bad signature: not signed by the named system's key") from error
        if audience != self._audience:
            raise InvalidToken("the token is for another service")
        if expires < (time.time() if now is None else now):
            raise InvalidToken("the token has expired: mint a new one")
        return system


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """A system's private key (PKCS#8 PEM); the file's stem is the system id."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_keys(folder: Path) -> dict[str, Ed25519PublicKey]:
    """The registered systems: every `<system id>.pub` (PEM) in `folder`."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(folder.glob("*.pub")):
        if not _SYSTEM_ID.match(path.stem):
            raise ValueError(f"{path.name}: the file name must be a system id, e.g. hsi-tipline")
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path} is not an Ed25519 public key")
        keys[path.stem] = key
    return keys
