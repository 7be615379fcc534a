"""After routing, on the real broker: the source withdraws or amends a referral and every
recipient is told; a partner declines as out of its jurisdiction and the referral goes on to the
CCHT desk (the lifecycle tracker asks for the re-route, the router makes it)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from kafka import KafkaConsumer, TopicPartition

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2, referral_pb2
from plumbing import topics
from plumbing.envelope import decode_event
from tests.e2e.system import RunningSystem
from tests.kafka_reading import LandedRecord, read_all, read_until

pytestmark = pytest.mark.broker

K = delivery_pb2
S = lifecycle_pb2
SOURCE = "nht-hotline"
REROUTE_RULE = "DECLINE-REROUTE"


def _submit(system: RunningSystem, referral: referral_pb2.Referral) -> str:
    request = intake_pb2.SubmitReferralRequest(referral=referral)
    return str(system.intake().SubmitReferral(request, timeout=15).referral_id)


def _withdraw(system: RunningSystem, referral_id: str) -> None:
    system.intake().WithdrawReferral(
        intake_pb2.WithdrawReferralRequest(
            referral_id=referral_id, source=SOURCE, reason="entered in error"
        ),
        timeout=15,
    )


def _inbox(
    system: RunningSystem, partners: list[str], referral_id: str, kind: int, count: int = 1
) -> dict[str, LandedRecord]:
    found = read_until(
        system.bootstrap_servers,
        [topics.inbox(p) for p in partners],
        keep=lambda r: r.key == referral_id and r.event.kind == kind,  # type: ignore[attr-defined]
        want=lambda kept: len(kept) >= count,
    )
    return {r.event.partner: r for r in found}  # type: ignore[attr-defined]


def _acknowledged(system: RunningSystem, delivery_ids: set[str]) -> None:
    """Wait until the tracker recorded every delivery's acknowledgement by its partner."""
    read_until(
        system.bootstrap_servers,
        [topics.LIFECYCLE],
        keep=lambda r: (
            isinstance(r.event, S.DeliveryStatusChanged)
            and r.event.delivery_id in delivery_ids
            and r.event.state == S.DELIVERY_STATE_ACKNOWLEDGED
        ),
        want=lambda kept: {r.event.delivery_id for r in kept} == delivery_ids,  # type: ignore[attr-defined]
    )


def _reroute_requested(system: RunningSystem, referral_id: str) -> S.DeliveryRerouteRequested:
    """The re-route request the tracker published for the referral on the submitted topic.

    Reads only the referral's own records: other tests put undecodable records on that topic on
    purpose (dead-letter tests), and a reader that decodes every record would trip over them.
    """
    consumer = KafkaConsumer(bootstrap_servers=system.bootstrap_servers, group_id=None)
    try:
        partitions = [
            TopicPartition(topics.SUBMITTED, p)
            for p in sorted(consumer.partitions_for_topic(topics.SUBMITTED) or ())
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    if record.key != referral_id.encode():
                        continue
                    _, event = decode_event(record.headers, record.value)
                    if isinstance(event, S.DeliveryRerouteRequested):
                        return event
        raise AssertionError(f"no DeliveryRerouteRequested for {referral_id} within 30s")
    finally:
        consumer.close()


def _minor(tag: str) -> referral_pb2.Referral:
    """A minor at risk of sex trafficking: HSI, its Victim Assistance Program and the CCHT desk."""
    referral = referral_pb2.Referral(
        source=SOURCE, source_reference=f"after-{tag}", narrative=f"CANARY-NARRATIVE-{tag}"
    )
    referral.indicators.append(referral_pb2.INDICATOR_SEX_TRAFFICKING)
    referral.victims.add(victim_ref="v1", full_name=f"CANARY-NAME-{tag}", age=15, us_state="GA")
    return referral


def _decline(system: RunningSystem, delivery_id: str, partner: str, reason: int) -> None:
    stub = delivery_pb2_grpc.PartnerStatusServiceStub(
        grpc.insecure_channel(system.partner_grpc_address)
    )
    response = stub.ReportDeliveryStatus(
        K.ReportDeliveryStatusRequest(
            delivery_id=delivery_id,
            partner=partner,
            state=S.DELIVERY_STATE_DECLINED,
            decline_reason=reason,  # type: ignore[arg-type]
        ),
        timeout=15,
    )
    assert response.state == S.DELIVERY_STATE_DECLINED


def test_a_withdrawal_notifies_every_recipient_with_ids_only(running_system: RunningSystem) -> None:
    tag = uuid.uuid4().hex[:12]
    referral_id = _submit(running_system, _minor(tag))
    recipients = ["ccht", "hsi", "hsi-vap"]
    _inbox(running_system, recipients, referral_id, K.DELIVERY_KIND_NEW, 3)

    _withdraw(running_system, referral_id)
    notices = _inbox(running_system, recipients, referral_id, K.DELIVERY_KIND_WITHDRAWAL, 3)
    assert sorted(notices) == recipients
    for notice in notices.values():
        copy = notice.event.referral  # type: ignore[attr-defined]
        assert copy.ListFields() == [(copy.DESCRIPTOR.fields_by_name["referral_id"], referral_id)]
        assert tag.encode() not in notice.raw_value
    # The notices are deliveries of the closed loop like any other: tracked and acknowledged.
    _acknowledged(running_system, {n.event.delivery_id for n in notices.values()})  # type: ignore[attr-defined]
    # And the partners' original copies are closed: WITHDRAWN, so nobody escalates them.
    originals = {
        r.event.delivery_id  # type: ignore[attr-defined]
        for r in read_all(
            running_system.bootstrap_servers,
            [topics.inbox(p) for p in recipients],
            keep=lambda r: r.key == referral_id and r.event.kind == K.DELIVERY_KIND_NEW,  # type: ignore[attr-defined]
        )
    }
    assert len(originals) == len(recipients)
    read_until(
        running_system.bootstrap_servers,
        [topics.LIFECYCLE],
        keep=lambda r: (
            isinstance(r.event, S.DeliveryStatusChanged)
            and r.event.delivery_id in originals
            and r.event.state == S.DELIVERY_STATE_WITHDRAWN
        ),
        want=lambda kept: {r.event.delivery_id for r in kept} == originals,  # type: ignore[attr-defined]
    )


def test_an_amendment_notifies_every_recipient_with_the_new_content(
    running_system: RunningSystem,
) -> None:
    tag = uuid.uuid4().hex[:12]
    referral = referral_pb2.Referral(
        source=SOURCE, source_reference=f"amend-{tag}", narrative=f"CANARY-FIRST-{tag}"
    )
    referral.indicators.append(referral_pb2.INDICATOR_LABOR_TRAFFICKING)
    referral.vessel.name = "Northern Star"
    referral.victims.add(victim_ref="v1", age=40, safety_concerns=f"CANARY-SAFETY-1-{tag}")
    referral_id = _submit(running_system, referral)
    # R1 and R5: HSI and the Coast Guard; R7: the Victim Assistance Program.
    _inbox(running_system, ["hsi", "hsi-vap", "uscg"], referral_id, K.DELIVERY_KIND_NEW, 3)

    # The source corrects it: not a vessel but a flight into an airport (R6: HSI and CBP).
    amended = referral_pb2.Referral()
    amended.CopyFrom(referral)
    amended.ClearField("vessel")
    amended.narrative = f"CANARY-SECOND-{tag}"
    amended.victims[0].safety_concerns = f"CANARY-SAFETY-2-{tag}"
    amended.locations.add(kind=referral_pb2.LOCATION_KIND_AIRPORT, airport_code="IAH")
    running_system.intake().AmendReferral(
        intake_pb2.AmendReferralRequest(
            referral_id=referral_id, referral=amended, reason="the tip was about a flight"
        ),
        timeout=15,
    )

    def after_amendment(record: LandedRecord) -> bool:
        """The amendment's deliveries: all but the originals (CBP had none)."""
        is_original = record.event.kind == K.DELIVERY_KIND_NEW  # type: ignore[attr-defined]
        return record.key == referral_id and (
            not is_original or record.topic == topics.inbox("cbp")
        )

    landed = read_until(
        running_system.bootstrap_servers,
        [topics.inbox(p) for p in ("cbp", "hsi", "hsi-vap", "uscg")],
        keep=after_amendment,
        want=lambda kept: len(kept) >= 4,
    )
    after = {r.event.partner: r for r in landed}  # type: ignore[attr-defined]
    # Every previous recipient hears of it; a new one gets it as new; one no longer chosen is
    # told the referral is withdrawn for it.
    assert {p: r.event.kind for p, r in after.items()} == {  # type: ignore[attr-defined]
        "hsi": K.DELIVERY_KIND_AMENDMENT,
        "hsi-vap": K.DELIVERY_KIND_AMENDMENT,
        "cbp": K.DELIVERY_KIND_NEW,
        "uscg": K.DELIVERY_KIND_WITHDRAWAL,
    }
    for partner in ("hsi", "cbp"):
        assert f"CANARY-SECOND-{tag}".encode() in after[partner].raw_value
        assert f"CANARY-FIRST-{tag}".encode() not in after[partner].raw_value
    assert f"CANARY-SAFETY-2-{tag}".encode() in after["hsi-vap"].raw_value
    assert f"CANARY-SECOND-{tag}".encode() not in after["hsi-vap"].raw_value, (
        "the narrative never goes to victim services"
    )
    assert tag.encode() not in after["uscg"].raw_value


def test_a_retried_amendment_with_its_reference_is_delivered_once(
    running_system: RunningSystem,
) -> None:
    tag = uuid.uuid4().hex[:12]
    referral = _minor(tag)
    referral_id = _submit(running_system, referral)
    _inbox(running_system, ["hsi"], referral_id, K.DELIVERY_KIND_NEW)

    def amend(narrative: str, reference: str) -> None:
        amended = referral_pb2.Referral()
        amended.CopyFrom(referral)
        amended.narrative = narrative
        running_system.intake().AmendReferral(
            intake_pb2.AmendReferralRequest(
                referral_id=referral_id,
                referral=amended,
                reason="more detail from the caller",
                amendment_reference=reference,
            ),
            timeout=15,
        )

    amend(f"CANARY-FIRST-AMENDMENT-{tag}", "case-notes-1")
    amend(f"CANARY-FIRST-AMENDMENT-{tag}", "case-notes-1")  # the source's retry
    amend(f"CANARY-SECOND-AMENDMENT-{tag}", "case-notes-2")

    # One referral's events stay in order: once the second amendment is delivered, a delivery
    # of the retry would already be there.
    amendments = read_until(
        running_system.bootstrap_servers,
        [topics.inbox("hsi")],
        keep=lambda r: r.key == referral_id and r.event.kind == K.DELIVERY_KIND_AMENDMENT,  # type: ignore[attr-defined]
        want=lambda kept: any(f"SECOND-AMENDMENT-{tag}".encode() in r.raw_value for r in kept),
    )
    assert len(amendments) == 2, [r.event.delivery_id for r in amendments]  # type: ignore[attr-defined]
    assert f"FIRST-AMENDMENT-{tag}".encode() in amendments[0].raw_value


def test_a_decline_out_of_jurisdiction_goes_on_to_the_ccht_desk(
    running_system: RunningSystem,
) -> None:
    tag = uuid.uuid4().hex[:12]
    referral = referral_pb2.Referral(
        source=SOURCE, source_reference=f"decline-{tag}", narrative=f"CANARY-NARRATIVE-{tag}"
    )
    referral.indicators.append(referral_pb2.INDICATOR_LABOR_TRAFFICKING)
    victim = referral.victims.add(
        victim_ref="v1", full_name=f"CANARY-NAME-{tag}", age=35, us_state="CA"
    )
    consent = victim.consents.add(scope=referral_pb2.CONSENT_SCOPE_VICTIM_SERVICES_REFERRAL)
    now = datetime.now(UTC)
    consent.granted_at.FromDatetime(now - timedelta(hours=1))
    consent.expires_at.FromDatetime(now + timedelta(days=30))
    referral_id = _submit(running_system, referral)
    # R8: the NGO of California's region, with the victim's consent to be referred there.
    (ngo,) = _inbox(running_system, ["ngo-west"], referral_id, K.DELIVERY_KIND_NEW).values()
    ngo_delivery = ngo.event.delivery_id  # type: ignore[attr-defined]
    _acknowledged(running_system, {ngo_delivery})  # victim services acknowledges for the NGO

    _decline(running_system, ngo_delivery, "ngo-west", S.DECLINE_REASON_OUT_OF_JURISDICTION)

    # The lifecycle tracker asks for the re-route; the router sends the referral to the desk.
    request = _reroute_requested(running_system, referral_id)
    assert (request.declined_partner, request.declined_delivery_id) == ("ngo-west", ngo_delivery)
    assert request.reason == S.DECLINE_REASON_OUT_OF_JURISDICTION
    (desk,) = _inbox(running_system, ["ccht"], referral_id, K.DELIVERY_KIND_NEW).values()
    assert list(desk.event.rule_ids) == [REROUTE_RULE]  # type: ignore[attr-defined]
    # The desk's own release profile: everything, the narrative and the identity included.
    assert f"CANARY-NARRATIVE-{tag}".encode() in desk.raw_value
    assert f"CANARY-NAME-{tag}".encode() in desk.raw_value
    (routed,) = read_until(
        running_system.bootstrap_servers,
        [topics.LIFECYCLE],
        keep=lambda r: (
            r.key == referral_id
            and isinstance(r.event, S.ReferralRouted)
            and any(m.rule_id == REROUTE_RULE for m in r.event.decision.matched_rules)
        ),
        want=bool,
    )
    assert [p.partner for p in routed.event.decision.partners] == ["ccht"]  # type: ignore[attr-defined]


def test_a_decline_when_the_desk_already_has_it_sends_nothing_more(
    running_system: RunningSystem,
) -> None:
    tag = uuid.uuid4().hex[:12]
    referral_id = _submit(running_system, _minor(tag))
    originals = _inbox(
        running_system, ["ccht", "hsi", "hsi-vap"], referral_id, K.DELIVERY_KIND_NEW, 3
    )
    hsi_delivery = originals["hsi"].event.delivery_id  # type: ignore[attr-defined]
    _acknowledged(running_system, {hsi_delivery})

    _decline(running_system, hsi_delivery, "hsi", S.DECLINE_REASON_NO_CAPACITY)
    _reroute_requested(running_system, referral_id)
    # A withdrawal after the re-route request lands behind whatever the request caused.
    _withdraw(running_system, referral_id)
    _inbox(running_system, ["ccht", "hsi"], referral_id, K.DELIVERY_KIND_WITHDRAWAL, 2)
    desk = read_all(
        running_system.bootstrap_servers,
        [topics.inbox("ccht")],
        keep=lambda r: r.key == referral_id,
    )
    assert [r.event.kind for r in desk] == [K.DELIVERY_KIND_NEW, K.DELIVERY_KIND_WITHDRAWAL]  # type: ignore[attr-defined]
