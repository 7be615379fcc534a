"""The router's handling of what happens after a submission, without Kafka or faust: records go
through ``ReferralRouter.handle`` with in-memory stand-ins for its tables, and the outputs are
applied the way the faust agent applies them (the state through its JSON encoding)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message

from ctroute.options.v1 import sensitivity_pb2
from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2, referral_pb2
from plumbing import topics
from plumbing.envelope import decode_event, event_headers
from referral.adapters.referral_state import decode_state, encode_state
from referral.domain.followups import REROUTE_RULE_ID, ReferralState
from referral.domain.policy import load_default_policy
from referral.router import RawRecord, ReferralRouter, RouterOutput

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
REFERRAL_ID = "ref-followups"
NAME = "CANARY-VICTIM-NAME-7Q2"
NARRATIVE = "CANARY-NARRATIVE-4JX"

K = delivery_pb2


@dataclass
class Memory:
    """The router's three tables, as dictionaries."""

    revisions: dict[str, set[str]] = field(default_factory=dict)
    states: dict[str, bytes] = field(default_factory=dict)
    recipients: dict[str, frozenset[str]] = field(default_factory=dict)

    def seen(self, referral_id: str, revision: str) -> bool:
        return revision in self.revisions.get(referral_id, set())

    def get(self, referral_id: str) -> ReferralState | None:
        known = self.states.get(referral_id)
        return decode_state(known) if known is not None else None

    def referrals_sharing(self, fingerprints: frozenset[str]) -> set[str]:
        return set()

    def recipients_of(self, referral_id: str) -> frozenset[str]:
        return self.recipients.get(referral_id, frozenset())

    def apply(self, output: RouterOutput) -> None:
        if output.correlated is not None:
            self.recipients[output.correlated.referral_id] = output.correlated.recipients
        if output.state is not None:
            self.states[output.state[0]] = encode_state(output.state[1])
        if output.routed is not None:
            self.revisions.setdefault(output.routed[0], set()).add(output.routed[1])


@dataclass
class Landed:
    topic: str
    event: Message
    raw: bytes


class Harness:
    def __init__(self) -> None:
        self.router = ReferralRouter(load_default_policy(), clock=lambda: NOW)
        self.memory = Memory()
        self.offset = 0

    def send(self, event: Message, event_id: str) -> list[Landed]:
        self.offset += 1
        record = RawRecord(
            topics.SUBMITTED,
            0,
            self.offset,
            REFERRAL_ID.encode(),
            event.SerializeToString(),
            event_headers(event, source="test", event_id=event_id),
        )
        output = self.router.handle(record, self.memory, self.memory, self.memory)
        self.memory.apply(output)
        landed = []
        for out in output.records:
            _, decoded = decode_event(out.headers, out.value)
            landed.append(Landed(out.topic, decoded, out.value))
        return landed


def _referral(narrative: str = NARRATIVE) -> referral_pb2.Referral:
    referral = referral_pb2.Referral(
        referral_id=REFERRAL_ID,
        source="nht-hotline",
        source_reference="call-1",
        narrative=narrative,
    )
    referral.indicators.append(referral_pb2.INDICATOR_SEX_TRAFFICKING)
    victim = referral.victims.add(
        victim_ref="v1", full_name=NAME, nationality="MX", us_state="TX", age=30
    )
    consent = victim.consents.add(scope=referral_pb2.CONSENT_SCOPE_LAW_ENFORCEMENT_CONTACT)
    consent.granted_at.FromDatetime(NOW - 2 * HOUR)
    consent.expires_at.FromDatetime(NOW + 30 * 24 * HOUR)
    return referral


def _deliveries(landed: list[Landed]) -> dict[str, delivery_pb2.PartnerDelivery]:
    found = {}
    for record in landed:
        if record.topic.endswith(".inbox"):
            assert isinstance(record.event, delivery_pb2.PartnerDelivery)
            found[record.event.partner] = record.event
    return found


def _raw(landed: list[Landed], partner: str) -> bytes:
    return next(r.raw for r in landed if r.topic == topics.inbox(partner))


def _of_type(landed: list[Landed], kind: type[Message]) -> list[Message]:
    return [r.event for r in landed if isinstance(r.event, kind)]


def _consent_withdrawn() -> lifecycle_pb2.ConsentWithdrawn:
    event = lifecycle_pb2.ConsentWithdrawn(
        referral_id=REFERRAL_ID,
        victim_ref="v1",
        scope=referral_pb2.CONSENT_SCOPE_LAW_ENFORCEMENT_CONTACT,
    )
    event.withdrawn_at.FromDatetime(NOW - HOUR)
    return event


def _consent_granted_ir() -> lifecycle_pb2.ConsentGranted:
    event = lifecycle_pb2.ConsentGranted(referral_id=REFERRAL_ID, victim_ref="v1")
    event.consent.scope = referral_pb2.CONSENT_SCOPE_IMMIGRATION_RELIEF
    event.consent.granted_at.FromDatetime(NOW - HOUR)
    event.consent.expires_at.FromDatetime(NOW + 90 * 24 * HOUR)
    return event


def test_a_referral_followed_through_consent_amendment_decline_and_withdrawal() -> None:
    system = Harness()

    submitted = system.send(lifecycle_pb2.ReferralSubmitted(referral=_referral()), "e-submit")
    new = _deliveries(submitted)
    assert sorted(new) == ["hsi", "hsi-vap"]
    assert NAME.encode() in _raw(submitted, "hsi"), "consent to LE contact releases the identity"

    # The victim withdraws consent to law-enforcement contact: HSI, which received the identity
    # on that consent, is asked to destroy it; the Victim Assistance Program keeps it.
    recalled = system.send(_consent_withdrawn(), "e-withdraw-consent")
    (recall,) = _deliveries(recalled).values()
    assert (recall.partner, recall.kind, recall.recalled_victim_ref) == (
        "hsi",
        K.DELIVERY_KIND_RECALL,
        "v1",
    )
    assert recall.referral.ListFields() == [
        (recall.referral.DESCRIPTOR.fields_by_name["referral_id"], REFERRAL_ID)
    ], "a recall carries ids only"
    assert list(recall.released_classes) == [sensitivity_pb2.SENSITIVITY_OPERATIONAL]
    assert NAME.encode() not in _raw(recalled, "hsi")
    (tracked,) = _of_type(recalled, lifecycle_pb2.ReferralDelivered)
    assert tracked.delivery_id == recall.delivery_id  # type: ignore[attr-defined]
    assert not _of_type(recalled, lifecycle_pb2.ReferralRouted), "a recall releases nothing"

    # A replay of the same event (a crash before the commit) delivers nothing twice.
    assert system.send(_consent_withdrawn(), "e-withdraw-consent") == []

    # The source amends the referral, its content still carrying the (withdrawn) consent.
    amended = system.send(
        lifecycle_pb2.ReferralAmended(referral=_referral("CANARY-AMENDED-9PD"), reason="more"),
        "e-amend-1",
    )
    copies = _deliveries(amended)
    assert {p: d.kind for p, d in copies.items()} == {
        "hsi": K.DELIVERY_KIND_AMENDMENT,
        "hsi-vap": K.DELIVERY_KIND_AMENDMENT,
    }
    assert NAME.encode() not in _raw(amended, "hsi"), "the withdrawal holds for amendments"
    assert b"CANARY-AMENDED-9PD" in _raw(amended, "hsi")
    assert NAME.encode() in _raw(amended, "hsi-vap")
    (consent,) = copies["hsi-vap"].referral.victims[0].consents
    assert consent.HasField("withdrawn_at"), "victim services sees the consent as it stands"

    # Immigration-relief consent for the Mexican national: USCIS is new, nobody else re-sent.
    granted = system.send(_consent_granted_ir(), "e-grant-ir")
    (uscis,) = _deliveries(granted).values()
    assert (uscis.partner, uscis.kind) == ("uscis", K.DELIVERY_KIND_NEW)
    assert NAME.encode() in _raw(granted, "uscis")
    (routed,) = _of_type(granted, lifecycle_pb2.ReferralRouted)
    assert [p.partner for p in routed.decision.partners] == ["uscis"]  # type: ignore[attr-defined]

    # HSI declines for lack of capacity: the CCHT desk takes over, under its own profile.
    reroute = lifecycle_pb2.DeliveryRerouteRequested(
        referral_id=REFERRAL_ID,
        declined_delivery_id=copies["hsi"].delivery_id,
        declined_partner="hsi",
        reason=lifecycle_pb2.DECLINE_REASON_NO_CAPACITY,
    )
    rerouted = system.send(reroute, "e-reroute")
    (desk,) = _deliveries(rerouted).values()
    assert (desk.partner, desk.kind, list(desk.rule_ids)) == (
        "ccht",
        K.DELIVERY_KIND_NEW,
        [REROUTE_RULE_ID],
    )
    assert NAME.encode() in _raw(rerouted, "ccht")
    assert b"CANARY-AMENDED-9PD" in _raw(rerouted, "ccht")
    (routed,) = _of_type(rerouted, lifecycle_pb2.ReferralRouted)
    assert [m.rule_id for m in routed.decision.matched_rules] == [REROUTE_RULE_ID]  # type: ignore[attr-defined]
    # Published again under another event id: still one re-route per declined delivery.
    assert system.send(reroute, "e-reroute-again") == []
    # Another decline once the desk has it: nothing more.
    again = lifecycle_pb2.DeliveryRerouteRequested(
        referral_id=REFERRAL_ID,
        declined_delivery_id=uscis.delivery_id,
        declined_partner="uscis",
        reason=lifecycle_pb2.DECLINE_REASON_OUT_OF_JURISDICTION,
    )
    assert system.send(again, "e-reroute-uscis") == []

    # A second amendment: the desk keeps receiving it, the decliners do not.
    second = _deliveries(
        system.send(
            lifecycle_pb2.ReferralAmended(referral=_referral("CANARY-AMENDED-2"), reason="x"),
            "e-amend-2",
        )
    )
    assert {p: d.kind for p, d in second.items()} == {
        "ccht": K.DELIVERY_KIND_AMENDMENT,
        "hsi-vap": K.DELIVERY_KIND_AMENDMENT,
    }

    # The source withdraws: everyone that received it is told, decliners included.
    withdrawn = system.send(
        lifecycle_pb2.ReferralWithdrawn(referral_id=REFERRAL_ID, reason="duplicate"), "e-wd"
    )
    notices = _deliveries(withdrawn)
    assert sorted(notices) == ["ccht", "hsi", "hsi-vap", "uscis"]
    assert {d.kind for d in notices.values()} == {K.DELIVERY_KIND_WITHDRAWAL}
    assert all(NAME.encode() not in r.raw for r in withdrawn)

    # A withdrawn referral stays withdrawn.
    late = system.send(lifecycle_pb2.ReferralAmended(referral=_referral(), reason="y"), "e-amend-3")
    assert late == []


def test_delivery_ids_are_stable_per_revision() -> None:
    first, second = Harness(), Harness()
    for system in (first, second):
        system.send(lifecycle_pb2.ReferralSubmitted(referral=_referral()), "e-submit")
    recalls = [
        _deliveries(system.send(_consent_withdrawn(), "e-1"))["hsi"].delivery_id
        for system in (first, second)
    ]
    assert recalls[0] == recalls[1]


def test_follow_ups_of_a_referral_the_router_has_no_record_of_do_nothing() -> None:
    system = Harness()
    assert system.send(_consent_withdrawn(), "e-1") == []
    assert system.send(_consent_granted_ir(), "e-2") == []
    assert system.send(lifecycle_pb2.ReferralWithdrawn(referral_id=REFERRAL_ID), "e-3") == []
    assert system.memory.states == {}


def test_an_amendment_of_an_unrecorded_referral_goes_to_everyone_chosen_as_an_amendment() -> None:
    system = Harness()
    landed = system.send(lifecycle_pb2.ReferralAmended(referral=_referral(), reason="x"), "e-a")
    assert {p: d.kind for p, d in _deliveries(landed).items()} == {
        "hsi": K.DELIVERY_KIND_AMENDMENT,
        "hsi-vap": K.DELIVERY_KIND_AMENDMENT,
    }
    state = system.memory.get(REFERRAL_ID)
    assert state is not None
    assert [h.partner for h in state.holdings] == ["hsi", "hsi-vap"]
