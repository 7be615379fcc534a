"""The full happy path, for every kind of partner: delivered, acknowledged by the partner's own
service, then accepted, in progress and completed with an outcome through the partner API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2, referral_pb2
from plumbing import topics
from tests.e2e.system import RunningSystem
from tests.kafka_reading import read_until

pytestmark = pytest.mark.broker

S = lifecycle_pb2
OUTCOME = {
    "hsi": S.OUTCOME_INVESTIGATION_OPENED,
    "cbp": S.OUTCOME_GOODS_DETAINED,
    "uscg": S.OUTCOME_MARITIME_ACTION_TAKEN,
    "ccht": S.OUTCOME_NO_ACTION,
    "hsi-vap": S.OUTCOME_VICTIM_SERVICES_PROVIDED,
    "ngo-southeast": S.OUTCOME_VICTIM_SERVICES_PROVIDED,
    "uscis": S.OUTCOME_IMMIGRATION_RELIEF_SCREENED,
}


def _referral_for_every_partner_type() -> intake_pb2.SubmitReferralRequest:
    request = intake_pb2.SubmitReferralRequest()
    referral = request.referral
    referral.source = "uscg-boarding"
    referral.source_reference = f"happy-{uuid.uuid4().hex[:12]}"
    referral.imminent_danger = True
    referral.indicators.extend(
        [referral_pb2.INDICATOR_LABOR_TRAFFICKING, referral_pb2.INDICATOR_FORCED_LABOR_IN_GOODS]
    )
    victim = referral.victims.add(victim_ref="v1", age=30, nationality="MX", us_state="GA")
    victim.full_name = "Happy Path Person"
    now = datetime.now(UTC)
    for scope in (
        referral_pb2.CONSENT_SCOPE_VICTIM_SERVICES_REFERRAL,
        referral_pb2.CONSENT_SCOPE_IMMIGRATION_RELIEF,
    ):
        consent = victim.consents.add(scope=scope)
        consent.granted_at.FromDatetime(now - timedelta(days=1))
        consent.expires_at.FromDatetime(now + timedelta(days=365))
    referral.vessel.name = "HAPPY STAR"
    referral.goods.add(product="shrimp", producer="Happy Seafood", destined_for_us=True)
    return request


def test_every_partner_type_takes_its_delivery_to_completed(running_system: RunningSystem) -> None:
    bootstrap = running_system.bootstrap_servers
    referral_id = (
        running_system.intake()
        .SubmitReferral(_referral_for_every_partner_type(), timeout=15)
        .referral_id
    )
    (routed,) = read_until(
        bootstrap,
        [topics.LIFECYCLE],
        keep=lambda r: r.key == referral_id and isinstance(r.event, S.ReferralRouted),
        want=bool,
    )
    deliveries = {p.partner: p.delivery_id for p in routed.event.decision.partners}  # type: ignore[attr-defined]
    assert set(deliveries) == set(OUTCOME), sorted(deliveries)

    # Each partner's own service acknowledges (victim assistance also accepts) on its own.
    read_until(
        bootstrap,
        [topics.LIFECYCLE],
        keep=lambda r: (
            r.key == referral_id
            and isinstance(r.event, S.DeliveryStatusChanged)
            and r.event.state == S.DELIVERY_STATE_ACKNOWLEDGED
        ),
        want=lambda kept: {r.event.partner for r in kept} == set(OUTCOME),  # type: ignore[attr-defined]
        timeout=60,
    )
    stub = delivery_pb2_grpc.PartnerStatusServiceStub(
        grpc.insecure_channel(running_system.partner_grpc_address)
    )
    for partner, delivery_id in sorted(deliveries.items()):
        steps = [
            S.DELIVERY_STATE_ACCEPTED,
            S.DELIVERY_STATE_IN_PROGRESS,
            S.DELIVERY_STATE_COMPLETED,
        ]
        for state in steps:
            request = delivery_pb2.ReportDeliveryStatusRequest(
                delivery_id=delivery_id, partner=partner, state=state
            )
            if state == S.DELIVERY_STATE_COMPLETED:
                request.outcome = OUTCOME[partner]
            try:
                answer = stub.ReportDeliveryStatus(request, timeout=15)
            except grpc.RpcError as error:
                # hsi-vap accepted at once by itself: ACCEPTED again is simply a repeat.
                raise AssertionError(f"{partner} {state}: {error.details()}") from error  # type: ignore[attr-defined]
            assert answer.state == state, (partner, answer.state)

    completed = read_until(
        bootstrap,
        [topics.LIFECYCLE],
        keep=lambda r: (
            r.key == referral_id
            and isinstance(r.event, S.DeliveryStatusChanged)
            and r.event.state == S.DELIVERY_STATE_COMPLETED
        ),
        want=lambda kept: len(kept) == len(OUTCOME),
    )
    assert {(r.event.partner, r.event.outcome) for r in completed} == set(OUTCOME.items())  # type: ignore[attr-defined]
