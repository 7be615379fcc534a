"""Runs the enforcement service: `python -m enforcement`."""

from __future__ import annotations

import logging

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2, referral_pb2
from enforcement.domain.work_items import PARTNERS, DeliveryView, open_work_item
from plumbing import config
from plumbing.partner_desk import StatusReport, run_partner_desk
from plumbing.runtime import configure_logging, stop_on_signals
from plumbing.store import KeyedStore
from plumbing.telemetry import configure_tracing, shutdown_tracing

SERVICE_NAME = "enforcement"
log = logging.getLogger(SERVICE_NAME)


def view_of(delivery: delivery_pb2.PartnerDelivery) -> DeliveryView:
    referral = delivery.referral
    return DeliveryView(
        delivery_id=delivery.delivery_id,
        referral_id=referral.referral_id,
        partner=delivery.partner,
        priority=lifecycle_pb2.Priority.Name(delivery.priority).removeprefix("PRIORITY_"),
        indicators=tuple(
            referral_pb2.Indicator.Name(i).removeprefix("INDICATOR_") for i in referral.indicators
        ),
        goods_count=len(referral.goods),
        vessel_involved=referral.HasField("vessel"),
    )


def main() -> None:
    configure_logging(SERVICE_NAME)
    provider = configure_tracing(SERVICE_NAME)
    stop = stop_on_signals()
    work_items = KeyedStore(config.data_dir() / "enforcement.sqlite3", "work_items")

    def handle(delivery: delivery_pb2.PartnerDelivery) -> list[StatusReport]:
        if delivery.overdue_partner:
            # A notice to the desk that another partner is late: triage, nothing to acknowledge.
            log.warning(
                "%s: %s has not acknowledged %s in time",
                delivery.referral.referral_id,
                delivery.overdue_partner,
                delivery.overdue_delivery_id,
            )
            return []
        item = open_work_item(view_of(delivery))
        if work_items.add_if_absent(item.delivery_id, item.as_record()):
            log.info("opened %s for %s (%s)", item.kind, item.referral_id, item.priority)
        return [StatusReport(lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED)]

    pattern = r"^partner\.(" + "|".join(PARTNERS) + r")\.inbox$"
    log.info("enforcement serving %s", ", ".join(PARTNERS))
    try:
        run_partner_desk(
            bootstrap_servers=config.kafka_bootstrap_servers(),
            service_name=SERVICE_NAME,
            inbox_pattern=pattern,
            handle_delivery=handle,
            stop=stop,
        )
    finally:
        work_items.close()
        shutdown_tracing(provider)


if __name__ == "__main__":
    main()
