"""A delivery nobody acknowledges in time is escalated: recorded, the partner reminded, the CCHT
desk told. Driven by moving the services' clock, not by waiting."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator

import pytest

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2, referral_pb2
from plumbing import topics
from tests.e2e.system import RunningSystem
from tests.kafka_reading import read_all, read_until

pytestmark = pytest.mark.broker

FOUR_HOURS_AND_A_MINUTE = 4 * 3600 + 60


def _goods() -> intake_pb2.SubmitReferralRequest:
    request = intake_pb2.SubmitReferralRequest()
    request.referral.source = "cbp-eallegations"
    request.referral.source_reference = f"sla-{uuid.uuid4().hex[:12]}"
    request.referral.indicators.append(referral_pb2.INDICATOR_FORCED_LABOR_IN_GOODS)
    request.referral.goods.add(product="gloves", producer="Late Works", destined_for_us=True)
    return request


@pytest.fixture
def enforcement_offline(running_system: RunningSystem) -> Iterator[None]:
    """CBP's desk is down: nobody acknowledges its deliveries until it comes back."""
    # Stopped cleanly, so it leaves its consumer group at once and rejoins quickly.
    running_system.stack.kill("enforcement", signal.SIGTERM)
    try:
        yield
    finally:
        running_system.move_clock(0)
        if "enforcement" not in running_system.stack.running:
            running_system.stack.restart("enforcement")


def test_an_unacknowledged_delivery_is_escalated_and_a_late_acknowledgement_still_counts(
    running_system: RunningSystem, enforcement_offline: None
) -> None:
    bootstrap = running_system.bootstrap_servers
    referral_id = running_system.intake().SubmitReferral(_goods(), timeout=15).referral_id
    (delivered,) = read_until(
        bootstrap,
        [topics.LIFECYCLE],
        keep=lambda r: (
            r.key == referral_id and isinstance(r.event, lifecycle_pb2.ReferralDelivered)
        ),
        want=bool,
    )
    delivery_id = delivered.event.delivery_id  # type: ignore[attr-defined]
    assert delivered.event.priority == lifecycle_pb2.PRIORITY_HIGH  # type: ignore[attr-defined]

    running_system.move_clock(FOUR_HOURS_AND_A_MINUTE)
    (escalated,) = read_until(
        bootstrap,
        [topics.LIFECYCLE],
        keep=lambda r: (
            r.key == referral_id and isinstance(r.event, lifecycle_pb2.DeliveryEscalated)
        ),
        want=bool,
    )
    assert escalated.event.delivery_id == delivery_id  # type: ignore[attr-defined]
    assert escalated.event.partner == "cbp"  # type: ignore[attr-defined]

    reminders = read_until(
        bootstrap,
        [topics.inbox("cbp"), topics.inbox("ccht")],
        keep=lambda r: r.key == referral_id and r.event.kind == delivery_pb2.DELIVERY_KIND_REMINDER,  # type: ignore[attr-defined]
        want=lambda kept: len(kept) == 2,
    )
    by_partner = {r.event.partner: r.event for r in reminders}  # type: ignore[attr-defined]
    assert by_partner["cbp"].delivery_id == delivery_id
    assert by_partner["ccht"].overdue_partner == "cbp"
    assert by_partner["ccht"].overdue_delivery_id == delivery_id
    for reminder in by_partner.values():
        assert reminder.referral.ListFields() == [
            (reminder.referral.DESCRIPTOR.fields_by_name["referral_id"], referral_id)
        ], "a reminder must carry ids only"

    running_system.move_clock(0)
    running_system.stack.restart("enforcement")
    (late_ack,) = read_until(
        bootstrap,
        [topics.LIFECYCLE],
        keep=lambda r: (
            r.key == referral_id and isinstance(r.event, lifecycle_pb2.DeliveryStatusChanged)
        ),
        want=bool,
        timeout=90,
    )
    assert late_ack.event.previous_state == lifecycle_pb2.DELIVERY_STATE_ESCALATED  # type: ignore[attr-defined]
    assert late_ack.event.state == lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED  # type: ignore[attr-defined]
    # Escalated once only, however many ticks passed while it was overdue.
    escalations = read_all(
        bootstrap,
        [topics.LIFECYCLE],
        keep=lambda r: (
            r.key == referral_id and isinstance(r.event, lifecycle_pb2.DeliveryEscalated)
        ),
    )
    assert len(escalations) == 1
