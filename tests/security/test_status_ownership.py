"""A partner cannot report on a delivery that is not its own, even on its own status topic: the
lifecycle tracker (`python -m referral tracker`, authenticated as svc-tracker) takes the topic a
report arrives on as the reporter's identity, whatever partner the report names."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaProducer

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2
from devstack.stack import SERVICES, ServiceStack
from plumbing import topics
from plumbing.envelope import event_headers
from plumbing.kafka import EventPublisher
from tests.kafka_reading import LandedRecord, read_until
from tests.security.conftest import AddPartner, Partner, SecureKafka

TRACKER = next(spec for spec in SERVICES if spec.name == "referral-tracker")
DEADLINE_S = 90.0


@pytest.fixture
def tracker_for(secure_kafka: SecureKafka, tmp_path: Path) -> Iterator[ServiceStack]:
    """The real tracker process, started after the test's partners exist (it finds status
    topics by pattern when it starts)."""
    stack = ServiceStack(
        bootstrap_servers=secure_kafka.bootstrap,
        grpc_address="127.0.0.1:0",
        data_dir=tmp_path / "data",
        trace_dir=tmp_path / "traces",
        log_dir=tmp_path / "logs",
        service_env={TRACKER.name: secure_kafka.services["svc-tracker"].env()},
        admin_settings=secure_kafka.admin_settings,
    )
    try:
        yield stack
    finally:
        stack.stop()


def _delivered(secure_kafka: SecureKafka, partner: str) -> lifecycle_pb2.ReferralDelivered:
    """Record a delivery on the lifecycle topic as the router does (as svc-router)."""
    event = lifecycle_pb2.ReferralDelivered(
        referral_id=f"ref-{uuid.uuid4().hex[:20]}",
        delivery_id=f"dlv-{uuid.uuid4().hex}",
        partner=partner,
        priority=lifecycle_pb2.PRIORITY_HIGH,
    )
    event.acknowledge_by.FromDatetime(datetime.now(UTC) + timedelta(hours=4))
    with pytest.MonkeyPatch.context() as env:
        for key, value in secure_kafka.services["svc-router"].env().items():
            env.setenv(key, value)
        publisher = EventPublisher(secure_kafka.bootstrap, source="referral-router")
    try:
        publisher.publish(topics.LIFECYCLE, event.referral_id, event).get(timeout=DEADLINE_S)
    finally:
        publisher.close()
    return event


def _report_as(
    secure_kafka: SecureKafka, reporter: Partner, delivered: lifecycle_pb2.ReferralDelivered
) -> None:
    """`reporter` acknowledges `delivered` on its own status topic, naming its addressee."""
    event = delivery_pb2.DeliveryStatusReported(referral_id=delivered.referral_id)
    event.report.delivery_id = delivered.delivery_id
    event.report.partner = delivered.partner
    event.report.state = lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED
    event.reported_at.FromDatetime(datetime.now(UTC))
    producer = KafkaProducer(
        bootstrap_servers=secure_kafka.bootstrap, acks="all", **reporter.client_settings()
    )
    try:
        producer.send(
            topics.status(reporter.id),
            key=delivered.referral_id.encode(),
            value=event.SerializeToString(),
            headers=event_headers(event, source=f"partner/{reporter.id}"),
        ).get(timeout=DEADLINE_S)
    finally:
        producer.close(timeout=5)


def _about(delivery_id: str, record: LandedRecord) -> bool:
    return getattr(record.event, "delivery_id", None) == delivery_id


@pytest.mark.broker
def test_a_report_on_another_partners_delivery_is_refused(
    secure_kafka: SecureKafka, add_partner: AddPartner, tracker_for: ServiceStack
) -> None:
    reporter, owner = add_partner(), add_partner()
    tracker_for.start_service(TRACKER)
    tracker_for.wait_ready(TRACKER, time.monotonic() + DEADLINE_S)
    theirs = _delivered(secure_kafka, owner.id)
    mine = _delivered(secure_kafka, reporter.id)

    _report_as(secure_kafka, reporter, theirs)
    _report_as(secure_kafka, reporter, mine)

    outcomes = read_until(
        secure_kafka.bootstrap,
        [topics.LIFECYCLE],
        want=lambda kept: (
            {r.event.DESCRIPTOR.name for r in kept}
            >= {"DeliveryStatusRejected", "DeliveryStatusChanged"}
        ),
        keep=lambda record: (
            isinstance(
                record.event,
                (lifecycle_pb2.DeliveryStatusRejected, lifecycle_pb2.DeliveryStatusChanged),
            )
            and (_about(theirs.delivery_id, record) or _about(mine.delivery_id, record))
        ),
        timeout=DEADLINE_S,
        security=secure_kafka.admin_settings,
    )
    by_delivery = {r.event.delivery_id: r.event for r in outcomes}  # type: ignore[attr-defined]
    refused = by_delivery[theirs.delivery_id]
    assert isinstance(refused, lifecycle_pb2.DeliveryStatusRejected)
    assert refused.reporting_partner == reporter.id
    accepted = by_delivery[mine.delivery_id]
    assert isinstance(accepted, lifecycle_pb2.DeliveryStatusChanged)
    assert accepted.state == lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED
