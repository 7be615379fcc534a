"""Runs the lifecycle tracker and the partner status API: `python -m referral tracker`."""

from __future__ import annotations

import logging
import threading

import grpc
from google.protobuf.message import Message

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import lifecycle_pb2
from plumbing import config, topics
from plumbing.grpc_auth import ServerTls, TokenAuthenticator
from plumbing.grpc_server import TracingInterceptor, start_grpc_server
from plumbing.kafka import ConsumedEvent, EventConsumer, EventPublisher
from plumbing.runtime import configure_logging, stop_on_signals
from plumbing.sensitivity import operational_view
from plumbing.telemetry import configure_tracing, shutdown_tracing
from plumbing.tokens import PARTNER_API_AUDIENCE, TokenVerifier, load_public_keys
from referral.adapters.audit_log import AuditLog
from referral.adapters.delivery_store import DeliveryStore
from referral.entrypoints.partner_api import PartnerStatusApi
from referral.tracker import LifecycleTracker

SERVICE_NAME = "referral-tracker"

AUDITED = (
    lifecycle_pb2.DeliveryStatusChanged,
    lifecycle_pb2.DeliveryStatusRejected,
    lifecycle_pb2.DeliveryEscalated,
)


def record_for_audit(audit: AuditLog, consumed: ConsumedEvent) -> None:
    """Append releases and status changes to the audit chain. Bodies are the events'
    OPERATIONAL fields only (contract-driven), so the chain itself holds no personal data."""
    event = consumed.event
    envelope = consumed.envelope
    if isinstance(event, lifecycle_pb2.ReferralRouted):
        decided = operational_view(event.decision)
        for release in decided.get("partners", []):
            audit.append(
                f"{envelope.event_id}/{release['partner']}",
                envelope.time,
                "RELEASE",
                event.referral_id,
                {
                    **release,
                    "policy_version": decided.get("policy_version", ""),
                    "matched_rules": decided.get("matched_rules", []),
                },
            )
    elif isinstance(event, AUDITED):
        audit.append(
            envelope.event_id,
            envelope.time,
            event.DESCRIPTOR.name,
            consumed.key,
            operational_view(event),
        )


log = logging.getLogger(__name__)


def _partner_api_security() -> tuple[TokenAuthenticator | None, grpc.ServerCredentials | None]:
    """TLS and partner tokens when CTROUTE_PARTNER_API_TLS_DIR is set; else plaintext."""
    tls_dir = config.partner_api_tls_dir()
    if tls_dir is None:
        log.warning(
            "CTROUTE_PARTNER_API_TLS_DIR unset: plaintext partner API trusting the partner "
            "named in a request (local test fixtures only)"
        )
        return None, None
    verifier = TokenVerifier(
        load_public_keys(config.partner_api_trusted_keys_dir()), audience=PARTNER_API_AUDIENCE
    )
    log.info("partner API: TLS on, %d partners registered", len(verifier.systems))
    return TokenAuthenticator(verifier), ServerTls.from_dir(tls_dir).credentials()


def main() -> None:
    configure_logging(SERVICE_NAME)
    provider = configure_tracing(SERVICE_NAME)
    stop = stop_on_signals()
    bootstrap = config.kafka_bootstrap_servers()
    publisher = EventPublisher(bootstrap, source=SERVICE_NAME)
    store = DeliveryStore(config.data_dir() / "lifecycle.sqlite3")
    audit = AuditLog(config.audit_log_path())
    publish_lock = threading.Lock()

    def publish(topic: str, key: str, event: Message, event_id: str) -> None:
        with publish_lock:
            publisher.publish(topic, key, event, event_id=event_id)

    tracker = LifecycleTracker(store, publish)

    authenticator, credentials = _partner_api_security()

    def register(server: grpc.Server) -> list[str]:
        delivery_pb2_grpc.add_PartnerStatusServiceServicer_to_server(
            PartnerStatusApi(tracker, authenticator), server
        )
        return [delivery_pb2.DESCRIPTOR.services_by_name["PartnerStatusService"].full_name]

    server = start_grpc_server(
        config.partner_grpc_address(),
        register,
        interceptors=[TracingInterceptor()],
        credentials=credentials,
    )
    consumer = EventConsumer(
        bootstrap,
        group_id=SERVICE_NAME,
        topic_pattern=r"^(referrals\.lifecycle|partner\..+\.status)$",
        publisher=publisher,
    )

    def handle(consumed: ConsumedEvent) -> None:
        event = consumed.event
        record_for_audit(audit, consumed)
        if isinstance(event, lifecycle_pb2.ReferralDelivered):
            tracker.delivered(event)
        elif isinstance(event, delivery_pb2.DeliveryStatusReported):
            partner = topics.partner_of_status_topic(consumed.topic)
            tracker.reported(partner, event, consumed.envelope.event_id)

    log.info("partner status API on %s", config.partner_grpc_address())
    try:
        consumer.run(handle, stop, between_polls=tracker.tick)
    finally:
        server.stop()
        publisher.close()
        store.close()
        audit.close()
        shutdown_tracing(provider)
