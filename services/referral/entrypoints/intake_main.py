"""Runs the gRPC intake: `python -m referral intake`."""

from __future__ import annotations

import logging

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc
from plumbing import config
from plumbing.grpc_server import TracingInterceptor, start_grpc_server
from plumbing.kafka import EventPublisher
from plumbing.runtime import configure_logging, stop_on_signals
from plumbing.telemetry import configure_tracing, shutdown_tracing
from referral.adapters.ledger import IntakeLedger
from referral.entrypoints.grpc_intake import ReferralIntake

SERVICE_NAME = "referral"


def main() -> None:
    configure_logging(SERVICE_NAME)
    provider = configure_tracing(SERVICE_NAME)
    stop = stop_on_signals()
    publisher = EventPublisher(config.kafka_bootstrap_servers(), source=f"{SERVICE_NAME}/intake")
    ledger = IntakeLedger(config.data_dir() / "intake-ledger.sqlite3")
    intake = ReferralIntake(publisher, ledger)

    def register(server: object) -> list[str]:
        intake_pb2_grpc.add_ReferralIntakeServiceServicer_to_server(intake, server)
        return [intake_pb2.DESCRIPTOR.services_by_name["ReferralIntakeService"].full_name]

    server = start_grpc_server(config.grpc_address(), register, interceptors=[TracingInterceptor()])
    logging.getLogger(__name__).info(
        "intake listening on %s (gRPC, reflection and health on)", config.grpc_address()
    )
    stop.wait()
    server.stop()
    publisher.close()
    ledger.close()
    shutdown_tracing(provider)
