"""Local credentials for an authenticated broker: one SCRAM principal per service.

`make run` and the security tests call :func:`provision_services` once the SASL broker is up:
each service principal of `plumbing.access` gets a password (kept in the secrets folder, mode
0600, so a restart on the same storage reuses it) and its ACLs. Service processes then receive
their own principal's settings as environment variables (:meth:`Credential.env`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumbing import access, kafka_access
from plumbing.kafka import sasl_settings


@dataclass(frozen=True)
class Credential:
    """A principal and its password (never printed: `repr` hides it)."""

    principal: str
    password: str = field(repr=False)

    def env(self) -> dict[str, str]:
        """The environment a process needs to authenticate as this principal."""
        return {
            "CTROUTE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "CTROUTE_KAFKA_SASL_USERNAME": self.principal,
            "CTROUTE_KAFKA_SASL_PASSWORD": self.password,
        }

    def client_settings(self) -> dict[str, Any]:
        """kafka-python settings authenticating as this principal."""
        return sasl_settings(self.principal, self.password)


def write_secret(path: Path, text: str) -> None:
    """Write a file only this user can read (created 0600, never world-readable meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def service_password(secrets_dir: Path, principal: str) -> str:
    """The principal's password kept in `secrets_dir`, created (0600) on first use."""
    path = secrets_dir / f"{principal}.password"
    if not path.is_file():
        write_secret(path, kafka_access.new_password())
    return path.read_text(encoding="utf-8").strip()


def provision_services(admin: Any, partners: list[str], secrets_dir: Path) -> dict[str, Credential]:
    """Give every service principal its password and ACLs for `partners`; by principal."""
    credentials: dict[str, Credential] = {}
    for principal, grants in access.system_grants(partners).items():
        credential = Credential(principal, service_password(secrets_dir, principal))
        kafka_access.set_password(admin, principal, credential.password)
        kafka_access.grant(admin, principal, grants)
        credentials[principal] = credential
    return credentials


def write_env_file(path: Path, bootstrap_servers: str, credential: Credential) -> None:
    """Settings for a shell (`set -a; . FILE; set +a`), e.g. an operator's refctl."""
    lines = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers, **credential.env()}
    write_secret(path, "".join(f"{key}={value}\n" for key, value in lines.items()))
