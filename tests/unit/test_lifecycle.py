"""The delivery lifecycle: who may set which state, and never backwards."""

from __future__ import annotations

import pytest

from referral.domain.lifecycle import (
    Accepted,
    Delivery,
    DeliveryState,
    Rejected,
    Repeated,
    StatusReport,
    apply_report,
    withdrawn_by_source,
)

S = DeliveryState


def _delivery(state: DeliveryState, partner: str = "hsi") -> Delivery:
    return Delivery("dlv-1", "ref-1", partner, state)


@pytest.mark.parametrize(
    ("current", "reported"),
    [
        (S.DELIVERED, S.ACKNOWLEDGED),
        (S.DELIVERED, S.ACCEPTED),
        (S.ESCALATED, S.ACKNOWLEDGED),
        (S.ACKNOWLEDGED, S.ACCEPTED),
        (S.ACCEPTED, S.IN_PROGRESS),
        (S.IN_PROGRESS, S.ON_HOLD),
        (S.ON_HOLD, S.IN_PROGRESS),
        (S.IN_PROGRESS, S.FAILED),
    ],
)
def test_forward_moves_are_accepted(current: DeliveryState, reported: DeliveryState) -> None:
    outcome = apply_report(_delivery(current), StatusReport("dlv-1", "hsi", reported))
    assert isinstance(outcome, Accepted)
    assert outcome.previous is current
    assert outcome.delivery.state is reported
    assert not outcome.reroute


@pytest.mark.parametrize(
    ("current", "reported"),
    [
        (S.COMPLETED, S.ACCEPTED),
        (S.ACCEPTED, S.ACKNOWLEDGED),
        (S.DECLINED, S.ACCEPTED),
        (S.DELIVERED, S.IN_PROGRESS),
        (S.WITHDRAWN, S.ACKNOWLEDGED),
        (S.FAILED, S.IN_PROGRESS),
    ],
)
def test_backward_or_skipping_moves_are_rejected(
    current: DeliveryState, reported: DeliveryState
) -> None:
    outcome = apply_report(_delivery(current), StatusReport("dlv-1", "hsi", reported))
    assert isinstance(outcome, Rejected)
    assert f"from {current} to {reported}" in outcome.reason


def test_a_partner_cannot_report_on_another_partners_delivery() -> None:
    outcome = apply_report(_delivery(S.DELIVERED), StatusReport("dlv-1", "cbp", S.ACKNOWLEDGED))
    assert isinstance(outcome, Rejected)
    assert "belongs to another partner" in outcome.reason


@pytest.mark.parametrize("reported", [S.ESCALATED, S.EXPIRED, S.WITHDRAWN, S.DELIVERED])
def test_system_states_cannot_be_set_by_a_partner(reported: DeliveryState) -> None:
    outcome = apply_report(_delivery(S.ACKNOWLEDGED), StatusReport("dlv-1", "hsi", reported))
    assert isinstance(outcome, Rejected)


def test_decline_needs_a_reason_and_completion_an_outcome() -> None:
    declined = apply_report(_delivery(S.DELIVERED), StatusReport("dlv-1", "hsi", S.DECLINED))
    completed = apply_report(_delivery(S.ACCEPTED), StatusReport("dlv-1", "hsi", S.COMPLETED))
    assert isinstance(declined, Rejected)
    assert isinstance(completed, Rejected)


@pytest.mark.parametrize(
    ("reason", "reroute"),
    [("OUT_OF_JURISDICTION", True), ("NO_CAPACITY", True), ("DUPLICATE", False)],
)
def test_declines_for_jurisdiction_or_capacity_are_rerouted(reason: str, reroute: bool) -> None:
    outcome = apply_report(
        _delivery(S.ACKNOWLEDGED), StatusReport("dlv-1", "hsi", S.DECLINED, decline_reason=reason)
    )
    assert isinstance(outcome, Accepted)
    assert outcome.reroute is reroute


def test_a_repeated_report_changes_nothing_and_an_unknown_delivery_is_refused() -> None:
    repeated = apply_report(_delivery(S.ACKNOWLEDGED), StatusReport("dlv-1", "hsi", S.ACKNOWLEDGED))
    unknown = apply_report(None, StatusReport("dlv-9", "hsi", S.ACKNOWLEDGED))
    assert isinstance(repeated, Repeated)
    assert isinstance(unknown, Rejected)


def test_a_withdrawal_closes_the_partners_open_copies_and_leaves_finished_ones() -> None:
    copies = [
        Delivery("dlv-original", "ref-1", "hsi", S.ACCEPTED),
        Delivery("dlv-amendment", "ref-1", "hsi", S.DELIVERED),
        Delivery("dlv-done", "ref-1", "hsi", S.COMPLETED),
        Delivery("dlv-notice", "ref-1", "hsi", S.DELIVERED),
    ]

    closed = withdrawn_by_source(copies, "dlv-notice")

    assert [(d.delivery_id, d.state) for d in closed] == [
        ("dlv-original", S.WITHDRAWN),
        ("dlv-amendment", S.WITHDRAWN),
    ]


def test_a_withdrawn_delivery_takes_no_more_reports() -> None:
    outcome = apply_report(_delivery(S.WITHDRAWN), StatusReport("dlv-1", "hsi", S.ACCEPTED))
    assert isinstance(outcome, Rejected)
