"""The loop a downstream service runs for the partners it serves: read each delivery from the
partners' inbox topics, hand it to the service's domain, and publish the partner's status report.

The service decides what a delivery means (an HSI lead, a victim-assistance case); this module
only moves records, so both downstream services share it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ctroute.partner.v1 import delivery_pb2
from plumbing import topics
from plumbing.kafka import ConsumedEvent, EventConsumer, EventPublisher, RejectedEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusReport:
    """A state the partner reports on one of its deliveries."""

    state: int
    decline_reason: int = 0
    outcome: int = 0


DeliveryHandler = Callable[[delivery_pb2.PartnerDelivery], list[StatusReport]]


def publish_status(
    publisher: EventPublisher,
    delivery: delivery_pb2.PartnerDelivery,
    report: StatusReport,
    *,
    event_id: str,
) -> None:
    """Publish a partner's status report on its status topic, keyed by the referral id."""
    event = delivery_pb2.DeliveryStatusReported(referral_id=delivery.referral.referral_id)
    event.report.delivery_id = delivery.delivery_id
    event.report.partner = delivery.partner
    event.report.state = report.state  # type: ignore[assignment]
    event.report.decline_reason = report.decline_reason  # type: ignore[assignment]
    event.report.outcome = report.outcome  # type: ignore[assignment]
    event.reported_at.FromDatetime(datetime.now(UTC))
    publisher.publish(
        topics.status(delivery.partner), delivery.referral.referral_id, event, event_id=event_id
    )


def run_partner_desk(
    *,
    bootstrap_servers: str,
    service_name: str,
    inbox_pattern: str,
    handle_delivery: DeliveryHandler,
    stop: threading.Event,
) -> None:
    """Consume the inboxes matching `inbox_pattern` until `stop` is set."""
    publisher = EventPublisher(bootstrap_servers, source=service_name)
    consumer = EventConsumer(
        bootstrap_servers,
        group_id=service_name,
        topic_pattern=inbox_pattern,
        publisher=publisher,
    )

    def handle(consumed: ConsumedEvent) -> None:
        delivery = consumed.event
        if not isinstance(delivery, delivery_pb2.PartnerDelivery):
            raise RejectedEvent(f"expected a PartnerDelivery, got {consumed.envelope.event_type}")
        try:
            addressed_to = topics.inbox(delivery.partner)
        except ValueError:
            raise RejectedEvent("delivery with an invalid partner id") from None
        if addressed_to != consumed.topic:
            raise RejectedEvent(f"delivery for {delivery.partner} found on {consumed.topic}")
        try:
            reports = handle_delivery(delivery)
        except (ValueError, KeyError) as error:
            # A value the service cannot interpret (an enum number it does not know, a malformed
            # field) fails the same way on every attempt: reject it at once, by type only (the
            # message could quote the delivery).
            raise RejectedEvent(f"delivery cannot be processed: {type(error).__name__}") from None
        for index, report in enumerate(reports):
            publish_status(
                publisher, delivery, report, event_id=f"{delivery.delivery_id}/status/{index}"
            )

    try:
        consumer.run(handle, stop)
    finally:
        publisher.close()
