"""The whole system under chaos: its own broker and its own service processes.

The chaos tests stop and restart the broker and kill services, so they cannot share the session
broker (``kafka_broker``) or the session system (``running_system``): this module-scoped
fixture starts a private ``EmbeddedKafka`` on free ports with its data in a pytest tmp dir, and
a ``ServiceStack`` with its own data, trace and log directories.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.broker import EmbeddedKafka, Progress, free_port, free_port_pair
from devstack.stack import ServiceStack
from plumbing import topics
from referral.domain.policy import Policy, load_default_policy
from tests.conftest import PROJECT_ROOT


@dataclass
class ChaosSystem:
    broker: EmbeddedKafka
    stack: ServiceStack
    policy: Policy
    grpc_address: str
    data_dir: Path
    log_dir: Path
    say: Progress

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers


@pytest.fixture(scope="module")
def chaos_system(
    tmp_path_factory: pytest.TempPathFactory, kafka_progress: Progress
) -> Iterator[ChaosSystem]:
    """A private broker (restartable on the same data dir) and every service against it."""
    base = tmp_path_factory.mktemp("chaos")
    port, controller_port = free_port_pair()
    broker = EmbeddedKafka(
        base / "kafka", port, controller_port, project_root=PROJECT_ROOT, progress=kafka_progress
    )
    broker.start()
    try:
        policy = load_default_policy()
        broker.create_topics(
            [(name, topics.PARTITIONS) for name in topics.all_topics(list(policy.partners))]
        )
        grpc_address = f"127.0.0.1:{free_port()}"
        stack = ServiceStack(
            bootstrap_servers=broker.bootstrap_servers,
            grpc_address=grpc_address,
            data_dir=base / "data",
            trace_dir=base / "traces",
            log_dir=base / "logs",
            # Spans are not under test here; without them the services need less of CI's CPU.
            extra_env={"CTROUTE_TRACING": "off"},
            progress=kafka_progress,
        )
        try:
            stack.start()
            yield ChaosSystem(
                broker, stack, policy, grpc_address, base / "data", base / "logs", kafka_progress
            )
        finally:
            stack.stop()
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _quiet_kafka_client_logs() -> Iterator[None]:
    """The test polls the broker all the time, also while it is down on purpose: kafka-python's
    connection errors and warnings would bury a failure report."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
