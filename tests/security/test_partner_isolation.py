"""Partner isolation on the real authenticated broker: each partner reads only its own inbox,
writes only its own status topic, and nothing works without a valid credential."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from ctroute.partner.v1 import delivery_pb2
from plumbing import topics
from plumbing.kafka import EventPublisher, sasl_settings
from tests.security.conftest import AddPartner, RunRefctl, SecureKafka

DEADLINE_S = 60.0


def _delivery(partner: str) -> delivery_pb2.PartnerDelivery:
    delivery = delivery_pb2.PartnerDelivery(delivery_id=f"dlv-{uuid.uuid4().hex}", partner=partner)
    delivery.referral.referral_id = f"ref-{uuid.uuid4().hex[:20]}"
    return delivery


def _deliver(
    secure_kafka: SecureKafka, delivery: delivery_pb2.PartnerDelivery, topic: str | None = None
) -> None:
    """Publish a delivery as the router does: authenticated as svc-router from the environment,
    to the addressee's inbox unless `topic` says otherwise."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in secure_kafka.services["svc-router"].env().items():
            env.setenv(key, value)
        publisher = EventPublisher(secure_kafka.bootstrap, source="referral-router")
    try:
        publisher.publish(topic or topics.inbox(delivery.partner), "k", delivery).get(
            timeout=DEADLINE_S
        )
    finally:
        publisher.close()


def _read_as(
    bootstrap: str, settings: dict[str, Any], topic: str, group: str | None
) -> list[bytes]:
    """Consume `topic` from the beginning until a record arrives; raise what the broker says."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **settings,
    )
    try:
        if group is None:
            partitions = [TopicPartition(topic, p) for p in range(topics.PARTITIONS)]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
        else:
            consumer.subscribe([topic])
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=500)
            values = [record.value for records in batches.values() for record in records]
            if values:
                return values
        return []
    finally:
        consumer.close()


def _write_as(bootstrap: str, settings: dict[str, Any], topic: str) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_block_ms=20_000, **settings
    )
    try:
        producer.send(topic, b"x").get(timeout=DEADLINE_S)
    finally:
        producer.close(timeout=5)


def _assert_cannot_read(bootstrap: str, settings: dict[str, Any], topic: str) -> None:
    """The broker hides the topic from the principal and refuses it the offsets to fetch from."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **settings)
    try:
        assert topic not in consumer.topics()
        assert not consumer.partitions_for_topic(topic)
        partitions = [TopicPartition(topic, p) for p in range(topics.PARTITIONS)]
        with pytest.raises(TopicAuthorizationFailedError):
            consumer.beginning_offsets(partitions)
        with pytest.raises(TopicAuthorizationFailedError):
            consumer.end_offsets(partitions)
    finally:
        consumer.close()


@pytest.mark.broker
def test_a_partner_reads_its_own_inbox_with_its_own_group(
    secure_kafka: SecureKafka, add_partner: AddPartner
) -> None:
    partner = add_partner()
    delivery = _delivery(partner.id)
    _deliver(secure_kafka, delivery)

    values = _read_as(
        secure_kafka.bootstrap, partner.client_settings(), topics.inbox(partner.id), partner.group
    )

    assert any(delivery.delivery_id.encode() in value for value in values)


@pytest.mark.broker
@pytest.mark.parametrize("target", ["other inbox", "submitted", "dead letters", "lifecycle"])
def test_a_partner_cannot_read_what_is_not_its_inbox(
    secure_kafka: SecureKafka, add_partner: AddPartner, target: str
) -> None:
    partner, other = add_partner(), add_partner()
    _deliver(secure_kafka, _delivery(other.id))
    topic = {
        "other inbox": topics.inbox(other.id),
        "submitted": topics.SUBMITTED,
        "dead letters": topics.DEAD_LETTER,
        "lifecycle": topics.LIFECYCLE,
    }[target]

    _assert_cannot_read(secure_kafka.bootstrap, partner.client_settings(), topic)


@pytest.mark.broker
def test_a_partner_cannot_use_another_partners_consumer_group(
    secure_kafka: SecureKafka, add_partner: AddPartner
) -> None:
    partner, other = add_partner(), add_partner()
    _deliver(secure_kafka, _delivery(partner.id))

    with pytest.raises(GroupAuthorizationFailedError):
        _read_as(
            secure_kafka.bootstrap,
            partner.client_settings(),
            topics.inbox(partner.id),
            other.group,
        )


@pytest.mark.broker
def test_a_partner_writes_only_its_own_status_topic(
    secure_kafka: SecureKafka, add_partner: AddPartner
) -> None:
    partner, other = add_partner(), add_partner()
    settings = partner.client_settings()

    _write_as(secure_kafka.bootstrap, settings, topics.status(partner.id))
    for topic in (
        topics.status(other.id),
        topics.inbox(partner.id),
        topics.inbox(other.id),
        topics.SUBMITTED,
        topics.LIFECYCLE,
    ):
        with pytest.raises(TopicAuthorizationFailedError):
            _write_as(secure_kafka.bootstrap, settings, topic)


@pytest.mark.broker
def test_an_unauthenticated_client_gets_nothing(
    secure_kafka: SecureKafka, add_partner: AddPartner
) -> None:
    partner = add_partner()
    _deliver(secure_kafka, _delivery(partner.id))
    plaintext: dict[str, Any] = {"bootstrap_timeout_ms": 5000, "request_timeout_ms": 5000}
    wrong_password = {**sasl_settings(partner.principal, "not-the-password"), **plaintext}

    for settings in (plaintext, wrong_password):
        with pytest.raises(KafkaError):
            _read_as(secure_kafka.bootstrap, settings, topics.inbox(partner.id), None)
        with pytest.raises(KafkaError):
            _write_as(secure_kafka.bootstrap, settings, topics.status(partner.id))


@pytest.mark.broker
def test_a_rotated_credential_stops_working_and_the_new_one_works(
    secure_kafka: SecureKafka, add_partner: AddPartner, run_refctl: RunRefctl
) -> None:
    partner = add_partner()
    _deliver(secure_kafka, _delivery(partner.id))
    old = {**partner.client_settings(), "bootstrap_timeout_ms": 5000}

    rotated = run_refctl("partner", "rotate", partner.id)

    assert rotated.code == 0, rotated.err
    new_password = rotated.settings["CTROUTE_KAFKA_SASL_PASSWORD"]
    assert new_password != partner.password
    with pytest.raises(KafkaError):
        _read_as(secure_kafka.bootstrap, old, topics.inbox(partner.id), partner.group)
    new = sasl_settings(partner.principal, new_password)
    assert _read_as(secure_kafka.bootstrap, new, topics.inbox(partner.id), partner.group)


@pytest.mark.broker
def test_a_removed_partner_can_no_longer_connect(
    secure_kafka: SecureKafka, add_partner: AddPartner, run_refctl: RunRefctl
) -> None:
    partner = add_partner()
    listed = run_refctl("partner", "list")
    assert partner.id in listed.out
    assert f"read topic {topics.inbox(partner.id)}" in listed.out

    removed = run_refctl("partner", "remove", partner.id)

    assert removed.code == 0, removed.err
    assert partner.id not in run_refctl("partner", "list").out
    settings = {**partner.client_settings(), "bootstrap_timeout_ms": 5000}
    with pytest.raises(KafkaError):
        _write_as(secure_kafka.bootstrap, settings, topics.status(partner.id))


@pytest.mark.broker
def test_partner_commands_explain_mistakes(add_partner: AddPartner, run_refctl: RunRefctl) -> None:
    partner = add_partner()

    again = run_refctl("partner", "add", partner.id)
    missing = run_refctl("partner", "rotate", "sec-nobody-here")

    assert again.code == 1
    assert f"refctl partner rotate {partner.id}" in again.err
    assert missing.code == 1
    assert "refctl partner add sec-nobody-here" in missing.err
    assert partner.password not in again.out + again.err
