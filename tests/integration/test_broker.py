"""The embedded Kafka broker works with the clients the services use.

Real broker, real clients: kafka-python producers, admin and consumers, as the services use them.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import (
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)

from devstack.broker import EmbeddedKafka, Progress, free_port

pytestmark = pytest.mark.broker

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _produce(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        futures = [producer.send(topic, key=key, value=value) for value in values]
        producer.flush(timeout=DEADLINE_S)
        for future in futures:
            future.get(timeout=DEADLINE_S)
    finally:
        producer.close()


def _read_partition(bootstrap: str, topic: str, partition: int, count: int) -> list[Any]:
    """Read ``count`` records from the start of one partition, without a consumer group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records: list[Any] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_produce_and_consume_in_order(kafka_broker: EmbeddedKafka) -> None:
    topic = _topic("ordered")
    assert kafka_broker.create_topics([(topic, 1)]) == [topic]
    values = [f"record-{i:03d}".encode() for i in range(100)]

    _produce(kafka_broker.bootstrap_servers, topic, values)
    records = _read_partition(kafka_broker.bootstrap_servers, topic, 0, len(values))

    assert [record.value for record in records] == values
    assert [record.offset for record in records] == list(range(100))


def test_create_topics_ignores_existing_topics(kafka_broker: EmbeddedKafka) -> None:
    first, second = _topic("existing"), _topic("added")
    assert kafka_broker.create_topics([(first, 2)]) == [first]

    assert kafka_broker.create_topics([(first, 5), (second, 3)]) == [second]

    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        described = {topic["name"]: topic for topic in admin.describe_topics([first, second])}
    finally:
        admin.close()
    assert len(described[first]["partitions"]) == 2  # unchanged, not recreated
    assert len(described[second]["partitions"]) == 3


def test_topics_are_not_auto_created(kafka_broker: EmbeddedKafka) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    try:
        missing = _topic("never-created")
        consumer = KafkaConsumer(missing, bootstrap_servers=kafka_broker.bootstrap_servers)
        try:
            consumer.poll(timeout_ms=500)
        finally:
            consumer.close()
        assert missing not in admin.list_topics()
    finally:
        admin.close()


def test_restart_on_same_data_dir_keeps_topics_records_and_offsets(
    tmp_path: Path, kafka_progress: Progress
) -> None:
    data_dir = tmp_path / "kafka"
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    topic, group = _topic("durable"), "restart-group"
    values = [f"kept-{i}".encode() for i in range(20)]

    first = EmbeddedKafka(
        data_dir, port, controller_port, project_root=PROJECT_ROOT, progress=kafka_progress
    )
    with first:
        first.create_topics([(topic, 1)])
        _produce(first.bootstrap_servers, topic, values)
        consumer = KafkaConsumer(
            bootstrap_servers=first.bootstrap_servers, group_id=group, enable_auto_commit=False
        )
        try:  # leader_epoch -1: unknown
            consumer.assign([TopicPartition(topic, 0)])
            consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(7, "", -1)})
        finally:
            consumer.close()
        cluster_id = first.cluster_id
    assert not first.running

    second = EmbeddedKafka(
        data_dir, port, controller_port, project_root=PROJECT_ROOT, progress=kafka_progress
    )
    with second:
        assert second.cluster_id == cluster_id  # storage reused, not reformatted
        assert second.create_topics([(topic, 1)]) == []  # still exists
        records = _read_partition(second.bootstrap_servers, topic, 0, len(values))
        assert [record.value for record in records] == values
        consumer = KafkaConsumer(
            bootstrap_servers=second.bootstrap_servers, group_id=group, enable_auto_commit=False
        )
        try:
            assert consumer.committed(TopicPartition(topic, 0)) == 7
        finally:
            consumer.close()
    assert not second.running


def test_constructor_rejects_equal_ports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must differ"):
        EmbeddedKafka(tmp_path, 19092, 19092, project_root=PROJECT_ROOT)
