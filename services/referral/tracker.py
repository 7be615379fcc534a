"""The lifecycle tracker's service layer: fold deliveries and partner status reports into each
delivery's state, enforcing the lifecycle, and publish what changed or why a report was refused.

Reports come from the partners' status topics (the topic, not the report, says which partner
sent it: in a secured deployment a partner can write only its own status topic) and from the
partner status API. Both go through `report`, under one lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2
from plumbing import clock as service_clock
from plumbing import topics
from referral.adapters.delivery_store import DeliveryStore
from referral.domain.lifecycle import (
    Accepted,
    Delivery,
    DeliveryState,
    Outcome,
    Rejected,
    Repeated,
    StatusReport,
    apply_report,
    withdrawn_by_source,
)

log = logging.getLogger(__name__)

Publish = Callable[[str, str, Message, str], None]
"""publish(topic, key, event, event_id)."""

ESCALATION_DESK = "ccht"
"""Where overdue deliveries are reported (the CCHT duty desk)."""

PARKING_GRACE = timedelta(seconds=60)
"""How long a report may wait for the delivery it names before it is refused as unknown."""


def state_name(value: int) -> DeliveryState:
    return DeliveryState(lifecycle_pb2.DeliveryState.Name(value).removeprefix("DELIVERY_STATE_"))  # type: ignore[arg-type]


def state_value(state: DeliveryState) -> lifecycle_pb2.DeliveryState.ValueType:
    return lifecycle_pb2.DeliveryState.Value(f"DELIVERY_STATE_{state.value}")


def report_of(partner: str, request: delivery_pb2.ReportDeliveryStatusRequest) -> StatusReport:
    return StatusReport(
        delivery_id=request.delivery_id,
        reporting_partner=partner,
        state=state_name(request.state),
        decline_reason=(
            lifecycle_pb2.DeclineReason.Name(request.decline_reason).removeprefix("DECLINE_REASON_")
            if request.decline_reason
            else None
        ),
        outcome=(
            lifecycle_pb2.Outcome.Name(request.outcome).removeprefix("OUTCOME_")
            if request.outcome
            else None
        ),
    )


class LifecycleTracker:
    """Keeps every delivery's state and publishes DeliveryStatusChanged / Rejected events."""

    def __init__(
        self,
        store: DeliveryStore,
        publish: Publish,
        *,
        clock: Callable[[], datetime] = service_clock.now,
    ) -> None:
        self._store = store
        self._publish = publish
        self._clock = clock
        self._lock = threading.RLock()

    def delivered(self, event: lifecycle_pb2.ReferralDelivered) -> None:
        """A delivery was made: track it, then apply any report that arrived before it."""
        with self._lock:
            delivery = Delivery(
                event.delivery_id, event.referral_id, event.partner, DeliveryState.DELIVERED
            )
            priority = lifecycle_pb2.Priority.Name(event.priority).removeprefix("PRIORITY_")
            deadline = event.acknowledge_by.ToDatetime(tzinfo=UTC)
            if not self._store.add(delivery, priority, deadline):
                return
            if event.withdraws_referral:
                self._withdraw_earlier(delivery)
            for event_id, payload in self._store.take_parked(event.delivery_id):
                parked = delivery_pb2.DeliveryStatusReported.FromString(payload)
                self._settle(parked.report.partner, parked.report, event_id)

    def _withdraw_earlier(self, notice: Delivery) -> None:
        """The source withdrew the referral: close the partner's open copies of it."""
        earlier = self._store.of_referral(notice.referral_id, notice.partner)
        previous = {d.delivery_id: d.state for d in earlier}
        for closed in withdrawn_by_source(earlier, notice.delivery_id):
            self._store.set_state(closed.delivery_id, closed.state)
            changed = lifecycle_pb2.DeliveryStatusChanged(
                referral_id=closed.referral_id,
                delivery_id=closed.delivery_id,
                partner=closed.partner,
                previous_state=state_value(previous[closed.delivery_id]),
                state=state_value(closed.state),
            )
            self._publish(
                topics.LIFECYCLE,
                closed.referral_id,
                changed,
                f"{closed.delivery_id}/withdrawn",
            )
            log.info("%s withdrawn by the source", closed.delivery_id)

    def reported(
        self, partner: str, event: delivery_pb2.DeliveryStatusReported, event_id: str
    ) -> None:
        """A report read from `partner`'s status topic."""
        with self._lock:
            if self._store.get(event.report.delivery_id) is None:
                # The delivery event may still be on its way on the lifecycle topic.
                parked = delivery_pb2.DeliveryStatusReported()
                parked.CopyFrom(event)
                parked.report.partner = partner
                self._store.park(
                    event_id, event.report.delivery_id, self._clock(), parked.SerializeToString()
                )
                return
            self._settle(partner, event.report, event_id)

    def report(
        self, partner: str, request: delivery_pb2.ReportDeliveryStatusRequest, event_id: str
    ) -> tuple[Outcome, Delivery | None]:
        """A report through the partner API: settled now, answered with the outcome."""
        with self._lock:
            outcome = self._settle(partner, request, event_id)
            return outcome, self._store.get(request.delivery_id)

    def tick(self) -> None:
        """Time-driven work: refuse reports parked too long, escalate overdue deliveries."""
        self.refuse_stale_parked_reports()
        self.escalate_overdue()

    def escalate_overdue(self) -> None:
        """Escalate every delivery unacknowledged past its deadline: record it, remind the
        partner, and report it to the coordination desk."""
        with self._lock:
            for delivery, priority, deadline in self._store.overdue(self._clock()):
                self._store.set_state(delivery.delivery_id, DeliveryState.ESCALATED)
                escalated = lifecycle_pb2.DeliveryEscalated(
                    referral_id=delivery.referral_id,
                    delivery_id=delivery.delivery_id,
                    partner=delivery.partner,
                )
                escalated.deadline.FromDatetime(deadline)
                event_id = f"{delivery.delivery_id}/escalated"
                self._publish(topics.LIFECYCLE, delivery.referral_id, escalated, event_id)
                self._publish(
                    topics.inbox(delivery.partner),
                    delivery.referral_id,
                    self._reminder(delivery, priority, delivery.partner, delivery.delivery_id),
                    f"{event_id}/reminder",
                )
                if delivery.partner != ESCALATION_DESK:
                    self._publish(
                        topics.inbox(ESCALATION_DESK),
                        delivery.referral_id,
                        self._reminder(
                            delivery,
                            priority,
                            ESCALATION_DESK,
                            f"{delivery.delivery_id}/escalation",
                        ),
                        f"{event_id}/desk",
                    )
                log.warning(
                    "%s for %s is overdue (deadline %s): escalated",
                    delivery.delivery_id,
                    delivery.partner,
                    deadline.isoformat(),
                )

    def _reminder(
        self, delivery: Delivery, priority: str, recipient: str, delivery_id: str
    ) -> delivery_pb2.PartnerDelivery:
        """A reminder carries ids only: the partner already holds (or the desk may request)
        the content, and a reminder must not become a second release of it."""
        reminder = delivery_pb2.PartnerDelivery(
            delivery_id=delivery_id,
            partner=recipient,
            priority=lifecycle_pb2.Priority.Value(f"PRIORITY_{priority}"),
            kind=delivery_pb2.DELIVERY_KIND_REMINDER,
        )
        reminder.referral.referral_id = delivery.referral_id
        reminder.delivered_at.FromDatetime(self._clock())
        if recipient != delivery.partner:
            reminder.overdue_partner = delivery.partner
            reminder.overdue_delivery_id = delivery.delivery_id
        return reminder

    def refuse_stale_parked_reports(self) -> None:
        """Refuse reports whose delivery never appeared within the grace period."""
        with self._lock:
            for event_id, payload in self._store.take_parked_before(self._clock() - PARKING_GRACE):
                parked = delivery_pb2.DeliveryStatusReported.FromString(payload)
                self._settle(parked.report.partner, parked.report, event_id)

    def _settle(
        self, partner: str, request: delivery_pb2.ReportDeliveryStatusRequest, event_id: str
    ) -> Outcome:
        report = report_of(partner, request)
        current = self._store.get(report.delivery_id)
        outcome = apply_report(current, report)
        if isinstance(outcome, Accepted):
            self._store.set_state(report.delivery_id, outcome.delivery.state)
            changed = lifecycle_pb2.DeliveryStatusChanged(
                referral_id=outcome.delivery.referral_id,
                delivery_id=report.delivery_id,
                partner=partner,
                previous_state=state_value(outcome.previous),
                state=state_value(outcome.delivery.state),
                decline_reason=request.decline_reason,
                outcome=request.outcome,
            )
            self._publish(
                topics.LIFECYCLE, outcome.delivery.referral_id, changed, f"{event_id}/changed"
            )
            if outcome.reroute:
                reroute = lifecycle_pb2.DeliveryRerouteRequested(
                    referral_id=outcome.delivery.referral_id,
                    declined_delivery_id=report.delivery_id,
                    declined_partner=partner,
                    reason=request.decline_reason,
                )
                self._publish(
                    topics.SUBMITTED, outcome.delivery.referral_id, reroute, f"{event_id}/reroute"
                )
            log.info(
                "%s %s -> %s by %s",
                report.delivery_id,
                outcome.previous,
                outcome.delivery.state,
                partner,
            )
        elif isinstance(outcome, Rejected):
            referral_id = current.referral_id if current else ""
            rejected = lifecycle_pb2.DeliveryStatusRejected(
                referral_id=referral_id,
                delivery_id=report.delivery_id,
                reporting_partner=partner,
                current_state=state_value(current.state) if current else 0,  # type: ignore[arg-type]
                attempted_state=request.state,
                reason=outcome.reason,
            )
            self._publish(
                topics.LIFECYCLE,
                referral_id or report.delivery_id,
                rejected,
                f"{event_id}/rejected",
            )
            log.warning("refused a report on %s: %s", report.delivery_id, outcome.reason)
        else:
            assert isinstance(outcome, Repeated)
        return outcome
