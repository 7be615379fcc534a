"""The whole system as real processes against the session's real Kafka broker: a session
fixture, registered in tests/conftest.py so the e2e and fuzz tests share one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ctroute.referral.v1 import intake_pb2_grpc
from devstack.broker import EmbeddedKafka, Progress, free_port
from devstack.stack import ServiceStack
from plumbing import topics
from referral.domain.policy import load_default_policy


@dataclass
class RunningSystem:
    bootstrap_servers: str
    grpc_address: str
    trace_dir: Path
    log_dir: Path
    stack: ServiceStack

    @property
    def partner_grpc_address(self) -> str:
        return self.stack.partner_grpc_address

    @property
    def query_grpc_address(self) -> str:
        return self.stack.query_grpc_address

    @property
    def victim_services_grpc_address(self) -> str:
        return self.stack.victim_services_grpc_address

    def move_clock(self, seconds: float) -> None:
        """Move every service's clock to real time + `seconds` (0 puts it back)."""
        (self.trace_dir.parent / "clock-offset").write_text(str(seconds))

    def intake(self) -> intake_pb2_grpc.ReferralIntakeServiceStub:
        return intake_pb2_grpc.ReferralIntakeServiceStub(grpc.insecure_channel(self.grpc_address))


@pytest.fixture(scope="session")
def running_system(
    kafka_broker: EmbeddedKafka,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_progress: Progress,
) -> Iterator[RunningSystem]:
    """Intake, router, enforcement and victim services, started once for the e2e tests."""
    policy = load_default_policy()
    kafka_broker.create_topics(
        [(name, topics.PARTITIONS) for name in topics.all_topics(list(policy.partners))]
    )
    base = tmp_path_factory.mktemp("system")
    grpc_address = f"127.0.0.1:{free_port()}"
    stack = ServiceStack(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        grpc_address=grpc_address,
        data_dir=base / "data",
        trace_dir=base / "traces",
        log_dir=base / "logs",
        progress=kafka_progress,
        extra_env={"CTROUTE_CLOCK_OFFSET_FILE": str(base / "clock-offset")},
    )
    stack.start()
    try:
        yield RunningSystem(
            kafka_broker.bootstrap_servers, grpc_address, base / "traces", base / "logs", stack
        )
    finally:
        stack.stop()
