"""Reading what actually landed on the real broker, with a deadline instead of sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from kafka import KafkaConsumer, TopicPartition

from plumbing.envelope import EnvelopeError, decode_event
from plumbing.telemetry import trace_id_of_headers


@dataclass(frozen=True)
class LandedRecord:
    """A decoded record with everything a test may check."""

    topic: str
    key: str
    event: Message
    headers: dict[str, bytes]
    raw_value: bytes

    @property
    def trace_id(self) -> str:
        return trace_id_of_headers(list(self.headers.items()))


def _committed_reader(
    bootstrap_servers: str, security: dict[str, Any] | None = None
) -> KafkaConsumer:
    """A consumer outside any group that sees what every reader of this system sees: committed
    records only (the router publishes in transactions)."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        isolation_level="read_committed",
        **(security or {}),
    )


def read_until(
    bootstrap_servers: str,
    topic_names: list[str],
    *,
    want: Callable[[list[LandedRecord]], bool],
    keep: Callable[[LandedRecord], bool] = lambda _record: True,
    timeout: float = 30,
    security: dict[str, Any] | None = None,
) -> list[LandedRecord]:
    """Read the topics from the beginning until `want(kept records)` holds; fail at the deadline.

    `security` are kafka-python settings for an authenticated broker."""
    consumer = _committed_reader(bootstrap_servers, security)
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topic_names
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        kept: list[LandedRecord] = []
        deadline = time.monotonic() + timeout
        while not want(kept):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s reading {topic_names}; kept {len(kept)} records: "
                    + ", ".join(f"{r.topic}:{r.event.DESCRIPTOR.name}" for r in kept)
                )
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    try:
                        _, event = decode_event(record.headers, record.value)
                    except EnvelopeError:
                        continue  # poison records other tests planted; not this reader's concern
                    landed = LandedRecord(
                        record.topic,
                        (record.key or b"").decode(),
                        event,
                        {k: v for k, v in record.headers or []},
                        record.value,
                    )
                    if keep(landed):
                        kept.append(landed)
        return kept
    finally:
        consumer.close()


def end_offsets(bootstrap_servers: str, topic: str) -> int:
    """The total number of records ever written to a topic (sum of partition end offsets)."""
    consumer = _committed_reader(bootstrap_servers)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def read_all(
    bootstrap_servers: str,
    topic_names: list[str],
    *,
    keep: Callable[[LandedRecord], bool] = lambda _record: True,
    timeout: float = 30,
) -> list[LandedRecord]:
    """Every record written to the topics up to now (their end offsets at the call)."""
    consumer = _committed_reader(bootstrap_servers)
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topic_names
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        kept: list[LandedRecord] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s reading {topic_names}")
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    if record.offset >= ends[TopicPartition(record.topic, record.partition)]:
                        continue
                    try:
                        _, event = decode_event(record.headers, record.value)
                    except EnvelopeError:
                        continue  # poison records other tests planted; not this reader's concern
                    landed = LandedRecord(
                        record.topic,
                        (record.key or b"").decode(),
                        event,
                        {k: v for k, v in record.headers or []},
                        record.value,
                    )
                    if keep(landed):
                        kept.append(landed)
        return kept
    finally:
        consumer.close()
