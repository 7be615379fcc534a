"""Runs the gRPC intake: `python -m referral intake`."""

from __future__ import annotations

import logging

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc
from plumbing import config
from plumbing.grpc_auth import ServerTls, TokenAuthenticator
from plumbing.grpc_server import TracingInterceptor, start_grpc_server
from plumbing.kafka import EventPublisher
from plumbing.runtime import configure_logging, stop_on_signals
from plumbing.telemetry import configure_tracing, shutdown_tracing
from plumbing.tokens import TokenVerifier, load_public_keys
from referral.adapters.ledger import IntakeLedger
from referral.entrypoints.grpc_intake import ReferralIntake

SERVICE_NAME = "referral"


def main() -> None:
    configure_logging(SERVICE_NAME)
    provider = configure_tracing(SERVICE_NAME)
    stop = stop_on_signals()
    publisher = EventPublisher(config.kafka_bootstrap_servers(), source=f"{SERVICE_NAME}/intake")
    ledger = IntakeLedger(config.data_dir() / "intake-ledger.sqlite3")
    tls_dir = config.intake_tls_dir()
    authenticator = None
    credentials = None
    if tls_dir is not None:
        verifier = TokenVerifier(load_public_keys(config.intake_trusted_keys_dir()))
        authenticator = TokenAuthenticator(verifier)
        credentials = ServerTls.from_dir(tls_dir).credentials()
        logging.getLogger(__name__).info(
            "TLS on; %d component systems registered: %s",
            len(verifier.systems),
            ", ".join(verifier.systems),
        )
    else:
        logging.getLogger(__name__).warning(
            "CTROUTE_INTAKE_TLS_DIR unset: plaintext, and the request's source is trusted "
            "(local test fixtures only)"
        )
    intake = ReferralIntake(publisher, ledger, authenticator)

    def register(server: object) -> list[str]:
        intake_pb2_grpc.add_ReferralIntakeServiceServicer_to_server(intake, server)
        return [intake_pb2.DESCRIPTOR.services_by_name["ReferralIntakeService"].full_name]

    server = start_grpc_server(
        config.grpc_address(),
        register,
        interceptors=[TracingInterceptor()],
        credentials=credentials,
    )
    logging.getLogger(__name__).info(
        "intake listening on %s (gRPC, reflection and health on)", config.grpc_address()
    )
    stop.wait()
    server.stop()
    publisher.close()
    ledger.close()
    shutdown_tracing(provider)
