"""The closed-loop lifecycle of one partner's delivery, and who may move it where.

Modelled on the HL7 FHIR Task states used for closed-loop social-care referrals. The router sets
DELIVERED, the system sets ESCALATED and EXPIRED, the source WITHDRAWN; a partner sets the rest,
only on its own deliveries, and never backwards (COMPLETED cannot become ACCEPTED again).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DeliveryState(StrEnum):
    """Where one partner's copy of a referral stands (names match the contract's enum)."""

    DELIVERED = "DELIVERED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    ACCEPTED = "ACCEPTED"
    DECLINED = "DECLINED"
    IN_PROGRESS = "IN_PROGRESS"
    ON_HOLD = "ON_HOLD"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ESCALATED = "ESCALATED"
    EXPIRED = "EXPIRED"
    WITHDRAWN = "WITHDRAWN"


PARTNER_SET_STATES = frozenset(
    {
        DeliveryState.ACKNOWLEDGED,
        DeliveryState.ACCEPTED,
        DeliveryState.DECLINED,
        DeliveryState.IN_PROGRESS,
        DeliveryState.ON_HOLD,
        DeliveryState.COMPLETED,
        DeliveryState.FAILED,
    }
)
"""The states a partner may report."""

FINAL_STATES = frozenset(
    {
        DeliveryState.DECLINED,
        DeliveryState.COMPLETED,
        DeliveryState.FAILED,
        DeliveryState.EXPIRED,
        DeliveryState.WITHDRAWN,
    }
)
"""States after which nothing more happens to a delivery."""

_S = DeliveryState
_PARTNER_MOVES: dict[DeliveryState, frozenset[DeliveryState]] = {
    _S.DELIVERED: frozenset({_S.ACKNOWLEDGED, _S.ACCEPTED, _S.DECLINED}),
    # A late acknowledgement still counts after an escalation.
    _S.ESCALATED: frozenset({_S.ACKNOWLEDGED, _S.ACCEPTED, _S.DECLINED}),
    _S.ACKNOWLEDGED: frozenset({_S.ACCEPTED, _S.DECLINED}),
    _S.ACCEPTED: frozenset({_S.IN_PROGRESS, _S.ON_HOLD, _S.COMPLETED, _S.FAILED}),
    _S.IN_PROGRESS: frozenset({_S.ON_HOLD, _S.COMPLETED, _S.FAILED}),
    _S.ON_HOLD: frozenset({_S.IN_PROGRESS, _S.COMPLETED, _S.FAILED}),
}

REROUTING_DECLINE_REASONS = frozenset({"OUT_OF_JURISDICTION", "NO_CAPACITY"})
"""A decline for these reasons sends the referral on to the next candidate (or the CCHT desk)."""


@dataclass(frozen=True)
class Delivery:
    """What the lifecycle knows of one delivery."""

    delivery_id: str
    referral_id: str
    partner: str
    state: DeliveryState


@dataclass(frozen=True)
class StatusReport:
    """A partner's report on a delivery, as received."""

    delivery_id: str
    reporting_partner: str
    state: DeliveryState
    decline_reason: str | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class Accepted:
    """The report moves the delivery to a new state."""

    previous: DeliveryState
    delivery: Delivery
    reroute: bool


@dataclass(frozen=True)
class Repeated:
    """The report repeats the current state (a redelivered report): nothing changes."""


@dataclass(frozen=True)
class Rejected:
    """The report cannot take effect; the reason is safe to show and to record."""

    reason: str


Outcome = Accepted | Repeated | Rejected


def withdrawn_by_source(deliveries: list[Delivery], notice_id: str) -> list[Delivery]:
    """The deliveries a withdrawal notice closes: the partner's earlier copies of the referral
    that are still open (a finished one keeps its outcome), now WITHDRAWN."""
    return [
        Delivery(d.delivery_id, d.referral_id, d.partner, DeliveryState.WITHDRAWN)
        for d in deliveries
        if d.delivery_id != notice_id and d.state not in FINAL_STATES
    ]


def apply_report(delivery: Delivery | None, report: StatusReport) -> Outcome:
    """Check a partner's report against the lifecycle and say what it does."""
    if delivery is None:
        return Rejected(f"no delivery {report.delivery_id} is known")
    if report.reporting_partner != delivery.partner:
        return Rejected(
            f"delivery {delivery.delivery_id} belongs to another partner; "
            f"{report.reporting_partner} may only report on its own deliveries"
        )
    if report.state not in PARTNER_SET_STATES:
        return Rejected(f"a partner cannot set {report.state}")
    if report.state is DeliveryState.DECLINED and not report.decline_reason:
        return Rejected("DECLINED needs a decline reason")
    if report.state is DeliveryState.COMPLETED and not report.outcome:
        return Rejected("COMPLETED needs an outcome")
    if report.state == delivery.state:
        return Repeated()
    if report.state not in _PARTNER_MOVES.get(delivery.state, frozenset()):
        return Rejected(f"cannot move a delivery from {delivery.state} to {report.state}")
    reroute = (
        report.state is DeliveryState.DECLINED
        and report.decline_reason in REROUTING_DECLINE_REASONS
    )
    moved = Delivery(delivery.delivery_id, delivery.referral_id, delivery.partner, report.state)
    return Accepted(delivery.state, moved, reroute)
