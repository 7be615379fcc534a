"""The jobs docker compose runs in containers of their own, against the session's broker: topic
creation (the init container) and the consumer-group health check (router and enforcement)."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType

from devstack.broker import EmbeddedKafka
from devstack.containers import create_topics
from plumbing import healthcheck, topics
from referral.domain.policy import default_policy_path, load_policy


def test_create_topics_creates_every_topic_with_the_codes_settings(
    kafka_broker: EmbeddedKafka,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    assert create_topics(bootstrap, replication_factor=1, timeout=30) == 0
    # A second run (a restarted compose project) finds them all and succeeds.
    assert create_topics(bootstrap, replication_factor=1, timeout=30) == 0
    expected = topics.all_topics(list(load_policy(default_policy_path()).partners))
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics(expected)}
        changelog = topics.ROUTER_STATE[0]
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, changelog)])
    finally:
        admin.close()
    assert set(described) == set(expected)
    assert {len(t["partitions"]) for t in described.values()} == {topics.PARTITIONS}
    (by_name,) = configs.values()
    assert by_name[changelog]["cleanup.policy"]["value"] == "compact"


def test_group_check_is_healthy_once_the_group_has_partitions(
    kafka_broker: EmbeddedKafka,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = f"healthcheck-{uuid.uuid4().hex[:8]}"
    group = f"healthcheck-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topics([(topic, 1)])
    assert healthcheck.group_assigned(bootstrap, group, timeout=5) is not None
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group)
    try:
        deadline = time.monotonic() + 30
        while healthcheck.group_assigned(bootstrap, group, timeout=5) is not None:
            assert time.monotonic() < deadline, "the group never became healthy"
            consumer.poll(timeout_ms=200)
    finally:
        consumer.close()
