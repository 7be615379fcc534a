"""The router's memory on a real broker: tables restored from their changelogs per assigned
partition, incrementally when a partition comes back, and the global table followed."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer

from devstack.broker import EmbeddedKafka
from plumbing.changelog import ChangelogReader, ChangelogWrite, GlobalTable, PartitionedTable
from plumbing.kafka import consumer_settings
from referral.entrypoints.router_app import merge_correlation

pytestmark = pytest.mark.broker

DEADLINE_S = 30.0


def _reader(bootstrap: str) -> ChangelogReader:
    return ChangelogReader(
        KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **consumer_settings()),
        timeout_s=DEADLINE_S,
    )


def _send(bootstrap: str, writes: list[ChangelogWrite]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for write in writes:
            producer.send(write.topic, key=write.key, value=write.value, partition=write.partition)
        producer.flush()
    finally:
        producer.close()


def _changelog(kafka_broker: EmbeddedKafka) -> str:
    name = f"test-changelog-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topics([(name, 3)])
    return name


def test_a_table_restores_only_the_partitions_assigned_and_then_only_what_is_new(
    kafka_broker: EmbeddedKafka,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = _changelog(kafka_broker)
    first_owner = PartitionedTable(topic)
    for partition, key in [(0, b"ref-a"), (1, b"ref-b"), (2, b"ref-c"), (0, b"ref-a")]:
        first_owner.partition = partition
        first_owner[key] = key + b"@" + str(partition).encode()
    _send(bootstrap, first_owner.take_writes())

    successor = PartitionedTable(topic)
    reader = _reader(bootstrap)
    try:
        assert reader.restore([successor], {0, 2}) == 3
        assert successor.get(b"ref-a") == b"ref-a@0"
        assert successor.get(b"ref-c") == b"ref-c@2"
        assert successor.get(b"ref-b") is None, "partition 1 belongs to another instance"
        assert successor.held_partitions() == {0, 2}

        # While another instance held partition 0 it wrote more; on getting it back, only the
        # new records are read.
        first_owner.partition = 0
        first_owner[b"ref-a"] = b"ref-a@0-amended"
        first_owner[b"ref-d"] = b"ref-d@0"
        _send(bootstrap, first_owner.take_writes())

        assert reader.restore([successor], {0, 2}) == 2
        assert successor.get(b"ref-a") == b"ref-a@0-amended"
        assert successor.get(b"ref-d") == b"ref-d@0"
        assert successor.get(b"ref-c") == b"ref-c@2"
    finally:
        reader.close()


def test_the_global_table_is_restored_whole_and_follows_new_writes(
    kafka_broker: EmbeddedKafka,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = _changelog(kafka_broker)
    writer = GlobalTable(topic, merge_correlation)
    for partition, referral_id in enumerate([b"ref-1", b"ref-2", b"ref-3"]):
        writer.partition = partition
        writer[b"fp:phone"] = referral_id
    _send(bootstrap, writer.take_writes())

    follower = GlobalTable(topic, merge_correlation)
    reader = _reader(bootstrap)
    try:
        reader.follow(follower)
        assert reader.restore_global(follower) == 3
        assert follower.get(b"fp:phone") == b"ref-1\nref-2\nref-3"

        writer.partition = 1
        writer[b"fp:phone"] = b"ref-4"
        _send(bootstrap, writer.take_writes())
        deadline = time.monotonic() + DEADLINE_S
        while follower.get(b"fp:phone") != b"ref-1\nref-2\nref-3\nref-4":
            assert time.monotonic() < deadline, "the new write never reached the follower"
            reader.catch_up(follower, wait_ms=200)
    finally:
        reader.close()


def test_only_committed_writes_are_restored(kafka_broker: EmbeddedKafka) -> None:
    """The router writes its memory in the batch's transaction: an aborted batch's memory must
    never come back, or a revision whose deliveries were aborted would count as routed."""
    bootstrap = kafka_broker.bootstrap_servers
    topic = _changelog(kafka_broker)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"test-{uuid.uuid4().hex[:8]}"
    )
    try:
        producer.init_transactions()
        for value, commit in [(b"original", True), (b"aborted-batch", False)]:
            producer.begin_transaction()
            producer.send(topic, key=b"ref-a", value=value, partition=1)
            producer.flush()
            if commit:
                producer.commit_transaction()
            else:
                producer.abort_transaction()
    finally:
        producer.close()

    table = PartitionedTable(topic)
    reader = _reader(bootstrap)
    try:
        assert reader.restore([table], {1}) == 1
        assert table.get(b"ref-a") == b"original"
        # Read past the transaction markers to the end: nothing is left to wait for.
        assert reader.restore([table], {1}) == 0
    finally:
        reader.close()
