"""The real gRPC intake on the session's Kafka broker: a session fixture, registered in
tests/conftest.py so the integration and fuzz tests share one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc
from devstack.broker import EmbeddedKafka
from plumbing import topics
from plumbing.grpc_server import TracingInterceptor, start_grpc_server
from plumbing.kafka import EventPublisher
from referral.adapters.ledger import IntakeLedger
from referral.entrypoints.grpc_intake import ReferralIntake

INTAKE_SOURCE = "referral/intake"
"""The ce_source the intake publishes with, as in `python -m referral intake`."""

READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class IntakeServer:
    """A running gRPC intake publishing to the test broker, and a client stub for it."""

    stub: intake_pb2_grpc.ReferralIntakeServiceStub
    bootstrap: str
    address: str
    source: str = INTAKE_SOURCE


@pytest.fixture(scope="session")
def intake_server(
    kafka_broker: EmbeddedKafka,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[IntakeServer]:
    """The real ReferralIntake servicer on a free port, wired as in `python -m referral intake`.

    Its topics are created first (the broker does not auto-create topics). The server runs with
    the same tracing interceptor as production; the ledger lives in the session's tmp dir.
    """
    kafka_broker.create_topics(
        [
            (name, topics.PARTITIONS)
            for name in (topics.SUBMITTED, topics.LIFECYCLE, topics.DEAD_LETTER)
        ]
    )
    publisher = EventPublisher(kafka_bootstrap, source=INTAKE_SOURCE)
    ledger = IntakeLedger(tmp_path_factory.mktemp("intake") / "intake-ledger.sqlite3")
    intake = ReferralIntake(publisher, ledger)

    def register(server: grpc.Server) -> list[str]:
        intake_pb2_grpc.add_ReferralIntakeServiceServicer_to_server(intake, server)
        return [intake_pb2.DESCRIPTOR.services_by_name["ReferralIntakeService"].full_name]

    server = start_grpc_server("127.0.0.1:0", register, interceptors=[TracingInterceptor()])
    address = f"127.0.0.1:{server.port}"
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_S)
        yield IntakeServer(
            stub=intake_pb2_grpc.ReferralIntakeServiceStub(channel),
            bootstrap=kafka_bootstrap,
            address=address,
        )
    finally:
        channel.close()
        server.stop(grace=1)
        publisher.close()
        ledger.close()
