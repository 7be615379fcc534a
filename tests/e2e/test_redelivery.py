"""A record the router sees again after a crash or a lost offset commit never produces a second
delivery: the router remembers routed revisions durably (a table restored from its changelog)."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import OffsetSpec

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import intake_pb2
from plumbing import topics
from referral.domain.policy import load_default_policy
from tests.e2e.system import RunningSystem
from tests.kafka_reading import read_all, read_until

pytestmark = pytest.mark.broker

ROUTER_GROUP = "referral-router"


def _referral(reference: str) -> intake_pb2.SubmitReferralRequest:
    request = intake_pb2.SubmitReferralRequest()
    request.referral.source = "cbp-eallegations"
    request.referral.source_reference = reference
    request.referral.indicators.append(7)  # INDICATOR_FORCED_LABOR_IN_GOODS
    goods = request.referral.goods.add()
    goods.product = "gloves"
    goods.destined_for_us = True
    return request


def _submitted_partitions(bootstrap: str) -> list[TopicPartition]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        return [
            TopicPartition(topics.SUBMITTED, p)
            for p in sorted(consumer.partitions_for_topic(topics.SUBMITTED) or ())
        ]
    finally:
        consumer.close()


def _wait_until_committed_to_end(bootstrap: str, timeout: float = 120) -> None:
    partitions = _submitted_partitions(bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=ROUTER_GROUP)
    try:
        deadline = time.monotonic() + timeout
        while True:
            ends = consumer.end_offsets(partitions)
            behind = {tp: end for tp, end in ends.items() if (consumer.committed(tp) or 0) < end}
            if not behind:
                return
            assert time.monotonic() < deadline, f"the router never committed up to {behind}"
            time.sleep(0.2)
    finally:
        consumer.close()


def _wait_until_remembered(bootstrap: str, ids: list[str], timeout: float = 60) -> None:
    changelog = topics.ROUTER_STATE[0]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partitions = [
            TopicPartition(changelog, p) for p in consumer.partitions_for_topic(changelog) or ()
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        missing = {referral_id.encode() for referral_id in ids}
        deadline = time.monotonic() + timeout
        while missing:
            assert time.monotonic() < deadline, f"router state never recorded {missing}"
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    missing = {m for m in missing if m not in (record.key or b"")}
    finally:
        consumer.close()


def test_replaying_the_whole_submitted_topic_delivers_nothing_twice(
    running_system: RunningSystem,
) -> None:
    bootstrap = running_system.bootstrap_servers
    ids = [
        running_system.intake()
        .SubmitReferral(_referral(f"redelivery-{uuid.uuid4().hex[:10]}"), timeout=15)
        .referral_id
        for _ in range(3)
    ]
    read_until(
        bootstrap,
        [topics.inbox("cbp")],
        keep=lambda r: r.key in ids,
        want=lambda kept: {r.key for r in kept} == set(ids),
    )

    # The router remembers a revision once its deliveries are acknowledged; the memory reaches
    # its changelog a moment later. The crash below comes after that moment: a crash inside it
    # is the at-least-once window, covered by partners deduplicating on delivery ids.
    _wait_until_remembered(bootstrap, ids)

    # A crash that loses every offset commit: the router restarts from the first record.
    running_system.stack.kill("referral-router", signal.SIGKILL)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        # The crashed member leaves the group when its session times out.
        deadline = time.monotonic() + 60
        while admin.describe_groups([ROUTER_GROUP])[ROUTER_GROUP]["members"]:
            assert time.monotonic() < deadline, "the killed router never left its group"
            time.sleep(0.2)
        result = admin.reset_group_offsets(
            ROUTER_GROUP, {tp: OffsetSpec.EARLIEST for tp in _submitted_partitions(bootstrap)}
        )
    finally:
        admin.close()
    assert result, "resetting the router's offsets returned nothing"
    router_log = running_system.log_dir / "referral-router.log"
    seen_before = router_log.stat().st_size
    running_system.stack.restart("referral-router")
    # The replay is over when the router has committed every partition to its end.
    _wait_until_committed_to_end(bootstrap)
    replayed = router_log.read_bytes()[seen_before:].decode("utf-8", errors="replace")
    for referral_id in ids:
        assert f"{referral_id} revision original already routed" in replayed

    inboxes = [topics.inbox(p) for p in load_default_policy().partners]
    # Reminders of overdue deliveries (other tests) repeat a delivery id on purpose.
    deliveries = read_all(
        bootstrap,
        inboxes,
        keep=lambda r: r.event.kind != delivery_pb2.DELIVERY_KIND_REMINDER,  # type: ignore[attr-defined]
    )
    counts = Counter(record.event.delivery_id for record in deliveries)  # type: ignore[attr-defined]
    assert counts, "no deliveries found at all"
    duplicated = {delivery_id: n for delivery_id, n in counts.items() if n > 1}
    assert not duplicated, f"deliveries made more than once after the replay: {duplicated}"
    ours = [r for r in deliveries if r.key in ids]
    assert sorted(r.key for r in ours) == sorted(ids)
