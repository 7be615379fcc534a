"""Local TLS material and caller keys for the gRPC APIs, generated when missing.

`make run` and the security tests call :func:`ensure_api_credentials` on a folder per API (for
`make run`: `.run/secrets/intake` with a key per component system, `.run/secrets/partner-api`
with a key per partner; git-ignored). Layout:

    ca.pem, ca-key.pem            a local certificate authority (key 0600)
    server.pem, server-key.pem    the API's certificate for localhost/127.0.0.1 (key 0600)
    trusted-keys/<id>.pub         whom the API accepts: one public key per caller
    systems/<id>.key              each caller's private key (0600), which signs its tokens

A real deployment gets its certificate from its own authority and each caller keeps its own
private key; the API only ever needs the public keys.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.credentials import write_secret
from plumbing.tokens import (
    INTAKE_AUDIENCE,
    issue_token,
    load_signing_key,
    new_signing_key,
    private_key_pem,
    public_key_pem,
)

COMPONENT_SYSTEMS = (
    "hsi-tipline",
    "nht-hotline",
    "cbp-eallegations",
    "cbp-ofo-screening",
    "tsa-screening",
    "usss",
    "fema",
    "uscis-adjudication",
    "uscg-boarding",
    "bli-airline",
)
"""The sources of the domain brief; each gets a key pair locally."""

_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class ApiCredentials:
    """Where the generated files are, and tokens for the local systems."""

    folder: Path

    @property
    def ca_pem(self) -> bytes:
        return (self.folder / "ca.pem").read_bytes()

    @property
    def trusted_keys(self) -> Path:
        return self.folder / "trusted-keys"

    def key_path(self, system: str) -> Path:
        return self.folder / "systems" / f"{system}.key"

    def token(self, caller: str, audience: str = INTAKE_AUDIENCE) -> str:
        """A fresh token for a local caller (its key must exist)."""
        return issue_token(caller, load_signing_key(self.key_path(caller)), audience=audience)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    hostnames: tuple[str, ...] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    *[x509.DNSName(name) for name in hostnames],
                ]
            ),
            critical=False,
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _ensure_certificates(folder: Path, hostnames: tuple[str, ...]) -> None:
    if (folder / "server.pem").is_file() and (folder / "ca.pem").is_file():
        return
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("ctroute local CA", ca_key, None, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", server_key, ca, ca_key, hostnames)
    write_secret(folder / "ca-key.pem", _pem_key(ca_key).decode())
    write_secret(folder / "server-key.pem", _pem_key(server_key).decode())
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))


def ensure_api_credentials(
    folder: Path, systems: tuple[str, ...] = COMPONENT_SYSTEMS, hostnames: tuple[str, ...] = ()
) -> ApiCredentials:
    """Create what is missing in `folder`: certificates (valid for localhost, 127.0.0.1 and
    `hostnames`), and a key pair per caller."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _ensure_certificates(folder, hostnames)
    credentials = ApiCredentials(folder)
    credentials.trusted_keys.mkdir(exist_ok=True)
    for system in systems:
        private = credentials.key_path(system)
        if not private.is_file():
            key = new_signing_key()
            write_secret(private, private_key_pem(key).decode())
            (credentials.trusted_keys / f"{system}.pub").write_bytes(public_key_pem(key))
    return credentials
