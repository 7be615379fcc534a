"""Checked-in encoded events still decode, field for field, with today's generated classes.

The vectors under tests/golden were written once by ``tests/golden/make_vectors.py``. Events
written by an older release stay on Kafka (and in partners' archives), so a change that makes
them decode differently (a renumbered, retyped or removed field) must fail here. The expected
values below are written out by hand on purpose: they do not come from the generator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from ctroute.options.v1 import sensitivity_pb2 as S
from ctroute.partner.v1 import delivery_pb2 as D
from ctroute.referral.v1 import lifecycle_pb2 as L
from ctroute.referral.v1 import referral_pb2 as R
from plumbing.envelope import message_class

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REFERRAL_ID = "ref-5d1c2a7e9b0f4c3d8e6a"
NGO_DELIVERY = "dlv-ref-5d1c2a7e9b0f4c3d8e6a-ngo-southeast"


def _check_referral_submitted(event: Any) -> None:
    assert event.submitted_by == "uscg-boarding"
    referral = event.referral
    assert referral.referral_id == REFERRAL_ID
    assert referral.source == "uscg-boarding"
    assert referral.source_reference == "BRD-2024-00117"
    assert referral.received_at.ToJsonString() == "2024-05-02T14:03:21.250Z"
    assert referral.observed_at.ToJsonString() == "2024-05-01T22:40:00Z"
    assert list(referral.indicators) == [
        R.INDICATOR_LABOR_TRAFFICKING,
        R.INDICATOR_DOCUMENT_SERVITUDE,
    ]
    assert referral.imminent_danger is True
    assert referral.narrative.startswith("Crew report 14-hour days")

    v1, v2 = referral.victims
    assert v1.victim_ref == "v1"
    assert v1.full_name == "Ana Example-Ruiz"
    assert v1.date_of_birth == "2006-09-14"
    assert v1.phone == "+1 305 555 0142"
    assert v1.email == "ana.example@example.org"
    assert v1.home_address.street == "100 Sample Ave Apt 4"
    assert v1.home_address.postal_code == "33101"
    assert v1.documents[0].kind == R.IDENTITY_DOCUMENT_KIND_PASSPORT
    assert v1.documents[0].number == "X0000001"
    assert v1.documents[0].issuing_country == "HN"
    assert v1.nationality == "HN"
    assert v1.immigration_status == "unknown"
    assert v1.us_state == "FL"
    assert list(v1.needs) == [R.SERVICE_NEED_SHELTER, R.SERVICE_NEED_INTERPRETATION]
    assert v1.preferred_language == "es"
    assert v1.safety_concerns == "employer holds her passport"
    assert v1.consents[0].scope == R.CONSENT_SCOPE_VICTIM_SERVICES_REFERRAL
    assert v1.consents[0].expires_at.ToJsonString() == "2024-11-02T09:00:00Z"
    assert not v1.HasField("age")
    assert v1.count == 1
    assert v2.victim_ref == "v2"
    assert v2.HasField("age")
    assert v2.age == 34
    assert v2.count == 11
    assert v2.description == "eleven deckhands recruited in the same port"
    assert list(v2.needs) == [R.SERVICE_NEED_LEGAL]

    assert referral.suspects[0].name == "Sample Fishing Ltd"
    assert list(referral.suspects[0].aliases) == ["SFL"]
    assert referral.suspects[0].description == "vessel operator"
    assert referral.reporter.name == "Crew Member Example"
    assert referral.reporter.role == "deckhand"
    assert referral.reporter.anonymous is False
    at_sea, port = referral.locations
    assert at_sea.kind == R.LOCATION_KIND_AT_SEA
    assert at_sea.coordinates.latitude == pytest.approx(24.5551)
    assert at_sea.coordinates.longitude == pytest.approx(-81.78)
    assert port.kind == R.LOCATION_KIND_PORT_OF_ENTRY
    assert port.port_of_entry_code == "5203"
    assert port.us_state == "FL"
    assert referral.vessel.name == "SAMPLE STAR"
    assert referral.vessel.imo_number == "9074729"
    assert referral.vessel.mmsi == "366999712"
    assert referral.vessel.flag_state == "PA"
    goods = referral.goods[0]
    assert goods.product == "frozen tuna loins"
    assert goods.hts_code == "0304.87"
    assert goods.producer == "Sample Fishing Ltd"
    assert goods.country_of_origin == "PA"
    assert goods.importer == "Example Seafood Imports LLC"
    assert goods.destined_for_us is True
    assert list(goods.shipment_ids) == ["MSCU1234567"]
    assert referral.attachments[0].media_type == "image/jpeg"
    assert referral.attachments[0].uri.endswith("/photo-1.jpg")
    assert referral.attachments[0].sha256.startswith("9f86d081")


def _check_partner_delivery(delivery: Any) -> None:
    assert delivery.delivery_id == NGO_DELIVERY
    assert delivery.partner == "ngo-southeast"
    assert delivery.priority == L.PRIORITY_URGENT
    assert list(delivery.rule_ids) == ["R4", "R7"]
    assert delivery.delivered_at.ToJsonString() == "2024-05-02T14:03:22Z"
    assert delivery.acknowledge_by.ToJsonString() == "2024-05-02T14:18:22Z"
    assert list(delivery.released_classes) == [
        S.SENSITIVITY_OPERATIONAL,
        S.SENSITIVITY_VICTIM_NEEDS,
        S.SENSITIVITY_VICTIM_IDENTITY,
    ]
    assert delivery.policy_version == "sha256:3b1f0c9a"
    assert delivery.kind == D.DELIVERY_KIND_NEW
    referral = delivery.referral
    assert referral.referral_id == REFERRAL_ID
    assert referral.source_reference == "BRD-2024-00117"
    assert referral.imminent_danger is True
    assert referral.narrative == ""
    assert not referral.HasField("reporter")
    v1, v2 = referral.victims
    assert (v1.victim_ref, v1.full_name, v1.phone) == ("v1", "Ana Example-Ruiz", "+1 305 555 0142")
    assert (v1.us_state, v1.preferred_language) == ("FL", "es")
    assert v1.nationality == ""
    assert (v2.victim_ref, v2.age, v2.count, v2.full_name) == ("v2", 34, 11, "")


def _check_referral_routed(event: Any) -> None:
    assert event.referral_id == REFERRAL_ID
    assert event.source == "uscg-boarding"
    decision = event.decision
    assert decision.policy_version == "sha256:3b1f0c9a"
    assert decision.priority == L.PRIORITY_URGENT
    assert decision.decided_at.ToJsonString() == "2024-05-02T14:03:21.900Z"
    assert [(m.rule_id, m.reason) for m in decision.matched_rules] == [
        ("R4", "imminent danger"),
        ("R7", "victim needs services in FL"),
    ]
    hsi, ngo = decision.partners
    assert hsi.partner == "hsi"
    assert hsi.priority == L.PRIORITY_URGENT
    assert list(hsi.rule_ids) == ["R4"]
    assert S.SENSITIVITY_REPORTER_IDENTITY in hsi.released_classes
    assert len(hsi.released_classes) == 6
    assert [(v.victim_ref, v.basis) for v in hsi.victim_identities] == [
        ("v1", L.RELEASE_BASIS_MINOR_OVERRIDE)
    ]
    assert hsi.delivery_id == "dlv-ref-5d1c2a7e9b0f4c3d8e6a-hsi"
    assert list(hsi.withheld_victim_refs) == []
    assert ngo.partner == "ngo-southeast"
    assert list(ngo.rule_ids) == ["R4", "R7"]
    assert list(ngo.released_classes) == [
        S.SENSITIVITY_OPERATIONAL,
        S.SENSITIVITY_VICTIM_NEEDS,
        S.SENSITIVITY_VICTIM_IDENTITY,
    ]
    assert [(v.victim_ref, v.basis) for v in ngo.victim_identities] == [
        ("v1", L.RELEASE_BASIS_CONSENT)
    ]
    assert list(ngo.withheld_victim_refs) == ["v2"]
    assert ngo.delivery_id == NGO_DELIVERY


def _check_delivery_status_reported(event: Any) -> None:
    assert event.referral_id == REFERRAL_ID
    assert event.reported_at.ToJsonString() == "2024-05-02T15:10:00Z"
    report = event.report
    assert report.delivery_id == NGO_DELIVERY
    assert report.partner == "ngo-southeast"
    assert report.state == L.DELIVERY_STATE_DECLINED
    assert report.decline_reason == L.DECLINE_REASON_NO_CAPACITY
    assert report.outcome == L.OUTCOME_UNSPECIFIED
    assert report.note == "shelter full this week"


VECTORS: list[tuple[str, type[Message], Callable[[Any], None]]] = [
    ("referral_submitted", L.ReferralSubmitted, _check_referral_submitted),
    ("partner_delivery", D.PartnerDelivery, _check_partner_delivery),
    ("referral_routed", L.ReferralRouted, _check_referral_routed),
    ("delivery_status_reported", D.DeliveryStatusReported, _check_delivery_status_reported),
]
IDS = [name for name, _, _ in VECTORS]


def _decode(name: str, cls: type[Message]) -> Message:
    message = cls()
    message.ParseFromString((GOLDEN / f"{name}.binpb").read_bytes())
    return message


def test_every_checked_in_vector_is_tested() -> None:
    on_disk = {path.stem for path in GOLDEN.glob("*.binpb")}
    json_on_disk = {path.stem for path in GOLDEN.glob("*.json")}
    assert on_disk == json_on_disk == set(IDS)


@pytest.mark.parametrize(("name", "cls", "check"), VECTORS, ids=IDS)
def test_binary_vector_decodes_to_the_expected_values(
    name: str, cls: type[Message], check: Callable[[Any], None]
) -> None:
    check(_decode(name, cls))


@pytest.mark.parametrize(("name", "cls", "check"), VECTORS, ids=IDS)
def test_binary_and_json_vectors_decode_to_the_same_message(
    name: str, cls: type[Message], check: Callable[[Any], None]
) -> None:
    from_json = json_format.Parse((GOLDEN / f"{name}.json").read_text(encoding="utf-8"), cls())

    assert _decode(name, cls) == from_json
    check(from_json)


@pytest.mark.parametrize(("name", "cls", "check"), VECTORS, ids=IDS)
def test_binary_vector_has_no_field_the_current_contract_does_not_know(
    name: str, cls: type[Message], check: Callable[[Any], None]
) -> None:
    """A removed or renumbered field survives decoding only as an unknown field: none allowed."""
    data = (GOLDEN / f"{name}.binpb").read_bytes()
    known_only = _decode(name, cls)
    known_only.DiscardUnknownFields()

    assert known_only.SerializeToString(deterministic=True) == data


@pytest.mark.parametrize(("name", "cls", "check"), VECTORS, ids=IDS)
def test_consumers_find_the_class_by_the_cloudevents_type(
    name: str, cls: type[Message], check: Callable[[Any], None]
) -> None:
    found = message_class(cls.DESCRIPTOR.full_name)
    event = found()
    event.ParseFromString((GOLDEN / f"{name}.binpb").read_bytes())

    assert found.DESCRIPTOR.full_name == cls.DESCRIPTOR.full_name
    check(event)
