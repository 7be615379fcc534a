"""Fixtures for the security tests: a broker with SASL/SCRAM and deny-by-default ACLs.

One authenticated broker per session, with the system's topics and every service principal
provisioned from `plumbing.access` exactly as `make run` does. Partners are added per test with
`refctl partner add` (unique ids), as an operator would.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from devstack.broker import EmbeddedKafka, Progress, free_port_pair
from devstack.credentials import Credential, provision_services
from plumbing import topics
from refctl.__main__ import main as refctl
from tests.conftest import PROJECT_ROOT

SYSTEM_PARTNERS = ["hsi", "hsi-vap", "ccht"]
"""Partners whose topics exist from the start (served by the desks, as in `make run`)."""


@dataclass(frozen=True)
class SecureKafka:
    """The authenticated broker and the credentials the tests act with."""

    broker: EmbeddedKafka
    services: dict[str, Credential]
    secrets: Path

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap_servers

    @property
    def admin_settings(self) -> dict[str, Any]:
        settings = dict(self.broker.client_config())
        settings.pop("bootstrap_servers")
        return settings

    def settings_of(self, principal: str) -> dict[str, Any]:
        return self.services[principal].client_settings()


@pytest.fixture(scope="session")
def secure_kafka(
    tmp_path_factory: pytest.TempPathFactory, kafka_progress: Progress
) -> Iterator[SecureKafka]:
    port, controller_port = free_port_pair()
    broker = EmbeddedKafka(
        tmp_path_factory.mktemp("kafka-sasl"),
        port,
        controller_port,
        project_root=PROJECT_ROOT,
        sasl=True,
        progress=kafka_progress,
    )
    broker.start(timeout=120)
    try:
        broker.create_topics(
            [(name, topics.PARTITIONS) for name in topics.all_topics(SYSTEM_PARTNERS)]
        )
        secrets = tmp_path_factory.mktemp("secrets")
        admin = KafkaAdminClient(**broker.client_config())
        try:
            services = provision_services(admin, SYSTEM_PARTNERS, secrets)
        finally:
            admin.close()
        yield SecureKafka(broker, services, secrets)
    finally:
        broker.stop()


@dataclass
class RefctlResult:
    code: int
    out: str
    err: str
    settings: dict[str, str] = field(default_factory=dict)


RunRefctl = Callable[..., RefctlResult]


@pytest.fixture
def run_refctl(secure_kafka: SecureKafka, monkeypatch: pytest.MonkeyPatch) -> RunRefctl:
    """Run `refctl ARGS...` in this process as the operator principal `svc-refctl`."""
    for key, value in secure_kafka.services["svc-refctl"].env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", secure_kafka.bootstrap)

    def run(*args: str) -> RefctlResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = refctl(list(args))
        settings = dict(
            line.strip().split("=", 1)
            for line in out.getvalue().splitlines()
            if line.startswith("  ") and "=" in line and line.strip()[0].isupper()
        )
        return RefctlResult(code, out.getvalue(), err.getvalue(), settings)

    return run


@dataclass(frozen=True)
class Partner:
    """A partner added with `refctl partner add`, and its connection settings."""

    id: str
    settings: dict[str, str]

    @property
    def principal(self) -> str:
        return self.settings["CTROUTE_KAFKA_SASL_USERNAME"]

    @property
    def password(self) -> str:
        return self.settings["CTROUTE_KAFKA_SASL_PASSWORD"]

    def client_settings(self) -> dict[str, Any]:
        return Credential(self.principal, self.password).client_settings()

    @property
    def group(self) -> str:
        return f"partner.{self.id}.test-{uuid.uuid4().hex[:6]}"


AddPartner = Callable[[], Partner]


@pytest.fixture
def add_partner(run_refctl: RunRefctl) -> AddPartner:
    """`refctl partner add` with a fresh partner id; returns the printed settings."""

    def add() -> Partner:
        partner_id = f"sec-{uuid.uuid4().hex[:8]}"
        result = run_refctl("partner", "add", partner_id)
        assert result.code == 0, result.err
        return Partner(partner_id, result.settings)

    return add
