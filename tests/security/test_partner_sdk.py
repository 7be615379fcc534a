"""The partner SDK against the authenticated broker, as a partner added with refctl uses it."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from ctroute.partner.v1 import delivery_pb2
from ctroute_partner import STATUS, PartnerInbox, PartnerSettings
from plumbing import topics
from tests.kafka_reading import read_until
from tests.security.conftest import AddPartner, Partner, SecureKafka
from tests.security.test_partner_isolation import _deliver, _delivery

DEADLINE_S = 60.0


def _settings(secure_kafka: SecureKafka, partner: Partner) -> PartnerSettings:
    return PartnerSettings(
        partner=partner.id,
        bootstrap_servers=secure_kafka.bootstrap,
        username=partner.principal,
        password=partner.password,
        security_protocol="SASL_PLAINTEXT",
    )


def _run_until(inbox: PartnerInbox, handle: object, done: threading.Event) -> None:
    thread = threading.Thread(target=inbox.run, args=(handle,), daemon=True)
    thread.start()
    finished = done.wait(DEADLINE_S)
    inbox.stop()
    thread.join(DEADLINE_S)
    assert finished, "the inbox did not handle the deliveries in time"


@pytest.mark.broker
def test_the_sdk_hands_over_each_delivery_once_after_retrying_a_failed_handler(
    secure_kafka: SecureKafka, add_partner: AddPartner, tmp_path: Path
) -> None:
    partner = add_partner()
    first, second, last = (_delivery(partner.id) for _ in range(3))
    # The third record is a redelivery of the first; all share a key, so one partition, in order.
    for delivery in (first, second, first, last):
        _deliver(secure_kafka, delivery)
    handled: list[str] = []
    failures = {first.delivery_id: 1}
    done = threading.Event()
    seen = tmp_path / "seen.sqlite3"

    with PartnerInbox(_settings(secure_kafka, partner), group="desk", seen_path=seen) as inbox:

        def handle(delivery: delivery_pb2.PartnerDelivery) -> None:
            if failures.get(delivery.delivery_id, 0) > 0:
                failures[delivery.delivery_id] -= 1
                raise RuntimeError("the partner's case system is down")
            handled.append(delivery.delivery_id)
            inbox.report(delivery, STATUS.DELIVERY_STATE_ACKNOWLEDGED)
            if delivery.delivery_id == last.delivery_id:
                done.set()

        _run_until(inbox, handle, done)
        group = inbox.group_id

    assert handled == [first.delivery_id, second.delivery_id, last.delivery_id]
    reports = read_until(
        secure_kafka.bootstrap,
        [topics.status(partner.id)],
        want=lambda kept: len(kept) == 3,
        security=secure_kafka.admin_settings,
    )
    assert {r.event.report.delivery_id for r in reports} == set(handled)  # type: ignore[attr-defined]
    assert {r.headers["ce_source"] for r in reports} == {f"partner/{partner.id}".encode()}
    _assert_committed_to_the_end(secure_kafka, group, topics.inbox(partner.id), expected=4)


def _assert_committed_to_the_end(
    secure_kafka: SecureKafka, group: str, topic: str, expected: int
) -> None:
    """Offsets are committed past every handled record (a restart replays nothing)."""
    admin = KafkaAdminClient(**secure_kafka.broker.client_config())
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    committed = sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)
    assert committed == expected


@pytest.mark.broker
def test_the_sdk_skips_what_is_not_a_valid_delivery_for_it(
    secure_kafka: SecureKafka, add_partner: AddPartner
) -> None:
    partner = add_partner()
    stray = _delivery(f"other-{uuid.uuid4().hex[:6]}")
    valid = _delivery(partner.id)
    _deliver(secure_kafka, stray, topics.inbox(partner.id))  # a routing bug, say
    _deliver(secure_kafka, valid)
    handled: list[str] = []
    done = threading.Event()

    with PartnerInbox(_settings(secure_kafka, partner), group="desk") as inbox:

        def handle(delivery: delivery_pb2.PartnerDelivery) -> None:
            handled.append(delivery.delivery_id)
            done.set()

        _run_until(inbox, handle, done)

    assert handled == [valid.delivery_id]
