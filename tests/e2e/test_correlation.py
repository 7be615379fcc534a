"""Referrals sharing a strong identifier are linked; each partner learns how many corroborate a
delivery and which of those it received itself, and nothing about the others."""

from __future__ import annotations

import random
import uuid

import pytest

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import intake_pb2, referral_pb2
from plumbing import topics
from tests.e2e.system import RunningSystem
from tests.kafka_reading import read_until

pytestmark = pytest.mark.broker


def _base(source: str) -> intake_pb2.SubmitReferralRequest:
    request = intake_pb2.SubmitReferralRequest()
    request.referral.source = source
    request.referral.source_reference = f"corr-{uuid.uuid4().hex[:12]}"
    return request


def _trafficking_with_phone(source: str, phone: str) -> intake_pb2.SubmitReferralRequest:
    request = _base(source)
    request.referral.indicators.append(referral_pb2.INDICATOR_SEX_TRAFFICKING)
    victim = request.referral.victims.add(victim_ref="v1", age=30)
    victim.phone = phone
    return request


def _goods_from(
    producer: str, *, with_trafficking: bool = False
) -> intake_pb2.SubmitReferralRequest:
    request = _base("cbp-eallegations")
    request.referral.indicators.append(referral_pb2.INDICATOR_FORCED_LABOR_IN_GOODS)
    if with_trafficking:
        request.referral.indicators.append(referral_pb2.INDICATOR_LABOR_TRAFFICKING)
    request.referral.goods.add(product="gloves", producer=producer, destined_for_us=True)
    return request


def _deliveries(
    system: RunningSystem, referral_id: str, partners: set[str]
) -> dict[str, delivery_pb2.PartnerDelivery]:
    records = read_until(
        system.bootstrap_servers,
        [topics.inbox(p) for p in partners],
        keep=lambda r: r.key == referral_id,
        want=lambda kept: {r.event.partner for r in kept} >= partners,  # type: ignore[attr-defined]
    )
    return {r.event.partner: r.event for r in records}  # type: ignore[attr-defined,misc]


def _submit(system: RunningSystem, request: intake_pb2.SubmitReferralRequest) -> str:
    referral_id: str = system.intake().SubmitReferral(request, timeout=15).referral_id
    return referral_id


def test_a_shared_phone_number_links_referrals_in_any_format(
    running_system: RunningSystem,
) -> None:
    digits = "".join(random.choices("0123456789", k=7))
    first = _submit(running_system, _trafficking_with_phone("hsi-tipline", f"+1 (212) {digits}"))
    first_copies = _deliveries(running_system, first, {"hsi", "hsi-vap"})
    assert first_copies["hsi"].corroboration.corroborating_referrals == 0

    second = _submit(running_system, _trafficking_with_phone("nht-hotline", f"1212{digits}"))
    second_copies = _deliveries(running_system, second, {"hsi", "hsi-vap"})
    for partner in ("hsi", "hsi-vap"):
        corroboration = second_copies[partner].corroboration
        assert corroboration.corroborating_referrals == 1
        assert list(corroboration.referral_ids_you_received) == [first]


def test_a_partner_learns_only_the_corroborating_referrals_it_received(
    running_system: RunningSystem,
) -> None:
    producer = f"Corroboration Textile {uuid.uuid4().hex[:6]} Co., Ltd."
    goods_only = _submit(running_system, _goods_from(producer))
    assert set(_deliveries(running_system, goods_only, {"cbp"})) >= {"cbp"}

    # The same producer, written differently, now with people trafficked: HSI joins in.
    linked = _submit(
        running_system, _goods_from(producer.upper().replace(",", ""), with_trafficking=True)
    )
    copies = _deliveries(running_system, linked, {"cbp", "hsi"})
    assert copies["cbp"].corroboration.corroborating_referrals == 1
    assert list(copies["cbp"].corroboration.referral_ids_you_received) == [goods_only]
    assert copies["hsi"].corroboration.corroborating_referrals == 1
    assert list(copies["hsi"].corroboration.referral_ids_you_received) == []
