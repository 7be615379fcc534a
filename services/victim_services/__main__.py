"""Runs the victim-services service: `python -m victim_services`.

Two doors: the partners' inboxes (hsi-vap, uscis, the regional NGOs), read by the partner desk,
and the consent API, where victim specialists record victims' consent decisions.
"""

from __future__ import annotations

import logging

import grpc

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import lifecycle_pb2
from plumbing import clock as service_clock
from plumbing import config
from plumbing.grpc_server import TracingInterceptor, start_grpc_server
from plumbing.kafka import EventPublisher
from plumbing.partner_desk import StatusReport, run_partner_desk
from plumbing.runtime import configure_logging, stop_on_signals
from plumbing.store import KeyedStore
from plumbing.telemetry import configure_tracing, shutdown_tracing
from victim_services.consent_api import ConsentBook, VictimConsentApi, kafka_publish
from victim_services.domain.cases import (
    INBOX_PARTNERS,
    DeliveryView,
    known_victims,
    open_case,
    opens_entry,
    states_to_report,
)

SERVICE_NAME = "victim-services"
log = logging.getLogger(SERVICE_NAME)


def view_of(delivery: delivery_pb2.PartnerDelivery) -> DeliveryView:
    victims = delivery.referral.victims
    return DeliveryView(
        delivery_id=delivery.delivery_id,
        referral_id=delivery.referral.referral_id,
        partner=delivery.partner,
        priority=lifecycle_pb2.Priority.Name(delivery.priority).removeprefix("PRIORITY_"),
        victim_count=sum(max(v.count, 1) for v in victims),
        identified_victims=sum(1 for v in victims if v.full_name or v.date_of_birth),
        kind=delivery_pb2.DeliveryKind.Name(delivery.kind).removeprefix("DELIVERY_KIND_"),
        victim_refs=tuple(v.victim_ref for v in victims if v.victim_ref),
        recalled_victim_ref=delivery.recalled_victim_ref,
    )


def main() -> None:
    configure_logging(SERVICE_NAME)
    provider = configure_tracing(SERVICE_NAME)
    stop = stop_on_signals()
    store_path = config.data_dir() / "victim-services.sqlite3"
    cases = KeyedStore(store_path, "cases")
    book = ConsentBook(
        KeyedStore(store_path, "consents"), KeyedStore(store_path, "referral_victims")
    )
    publisher = EventPublisher(config.kafka_bootstrap_servers(), source=SERVICE_NAME)

    def register(server: grpc.Server) -> list[str]:
        delivery_pb2_grpc.add_VictimConsentServiceServicer_to_server(
            VictimConsentApi(book, kafka_publish(publisher), service_clock.now), server
        )
        return [delivery_pb2.DESCRIPTOR.services_by_name["VictimConsentService"].full_name]

    server = start_grpc_server(
        config.victim_services_grpc_address(), register, interceptors=[TracingInterceptor()]
    )

    def handle(delivery: delivery_pb2.PartnerDelivery) -> list[StatusReport]:
        view = view_of(delivery)
        if opens_entry(view):
            case = open_case(view)
            if case.notice in {"NEW", "AMENDMENT"}:
                book.learn_victims(case.referral_id, known_victims(frozenset(), view))
            if cases.add_if_absent(case.delivery_id, case.as_record()):
                log.info(
                    "%s: %s for %s (%s)", case.kind, case.notice, case.referral_id, case.priority
                )
        return [
            StatusReport(lifecycle_pb2.DeliveryState.Value(f"DELIVERY_STATE_{state}"))
            for state in states_to_report(view)
        ]

    pattern = r"^partner\.(" + INBOX_PARTNERS.pattern.strip("^$") + r")\.inbox$"
    log.info(
        "victim services serving hsi-vap, uscis and the regional NGOs; consent API on %s",
        config.victim_services_grpc_address(),
    )
    try:
        run_partner_desk(
            bootstrap_servers=config.kafka_bootstrap_servers(),
            service_name=SERVICE_NAME,
            inbox_pattern=pattern,
            handle_delivery=handle,
            stop=stop,
        )
    finally:
        server.stop()
        publisher.close()
        book.close()
        cases.close()
        shutdown_tracing(provider)


if __name__ == "__main__":
    main()
