"""Runs the victim-services service: `python -m victim_services`."""

from __future__ import annotations

import logging

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2
from plumbing import config
from plumbing.partner_desk import StatusReport, run_partner_desk
from plumbing.runtime import configure_logging, stop_on_signals
from plumbing.store import KeyedStore
from plumbing.telemetry import configure_tracing, shutdown_tracing
from victim_services.domain.cases import INBOX_PARTNERS, DeliveryView, open_case

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
    )


def main() -> None:
    configure_logging(SERVICE_NAME)
    provider = configure_tracing(SERVICE_NAME)
    stop = stop_on_signals()
    cases = KeyedStore(config.data_dir() / "victim-services.sqlite3", "cases")

    def handle(delivery: delivery_pb2.PartnerDelivery) -> list[StatusReport]:
        case = open_case(view_of(delivery))
        if cases.add_if_absent(case.delivery_id, case.as_record()):
            log.info("opened %s for %s (%s)", case.kind, case.referral_id, case.priority)
        return [StatusReport(lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED)]

    pattern = r"^partner\.(" + INBOX_PARTNERS.pattern.strip("^$") + r")\.inbox$"
    log.info("victim services serving hsi-vap, uscis and the regional NGOs")
    try:
        run_partner_desk(
            bootstrap_servers=config.kafka_bootstrap_servers(),
            service_name=SERVICE_NAME,
            inbox_pattern=pattern,
            handle_delivery=handle,
            stop=stop,
        )
    finally:
        cases.close()
        shutdown_tracing(provider)


if __name__ == "__main__":
    main()
