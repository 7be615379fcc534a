"""`refctl tail PARTNER`: follow a partner's inbox and print each delivery as it arrives."""

from __future__ import annotations

import sys
import time

from google.protobuf import json_format
from kafka import KafkaConsumer, TopicPartition

from ctroute.options.v1 import sensitivity_pb2
from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2
from plumbing import topics
from plumbing.envelope import EnvelopeError, decode_event
from plumbing.kafka import consumer_settings


def describe(delivery: delivery_pb2.PartnerDelivery) -> str:
    """One line a duty officer can read: what arrived, how urgent, what it contains."""
    classes = ",".join(
        sensitivity_pb2.Sensitivity.Name(c).removeprefix("SENSITIVITY_")
        for c in delivery.released_classes
    )
    return (
        f"{delivery.delivered_at.ToDatetime():%H:%M:%S} {delivery.partner:<16} "
        f"{delivery_pb2.DeliveryKind.Name(delivery.kind).removeprefix('DELIVERY_KIND_'):<10} "
        f"{delivery.referral.referral_id} "
        f"{lifecycle_pb2.Priority.Name(delivery.priority).removeprefix('PRIORITY_'):<7} "
        f"rules={','.join(delivery.rule_ids)} classes={classes} "
        f"victims={len(delivery.referral.victims)} delivery={delivery.delivery_id}"
    )


def tail_partner(
    partner: str,
    *,
    bootstrap_servers: str,
    from_beginning: bool,
    as_json: bool,
    limit: int,
    timeout: float,
) -> int:
    topic = topics.inbox(partner)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        **consumer_settings(),
    )
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        print(f"refctl: no topic {topic}: is {partner!r} a partner of the policy?", file=sys.stderr)
        return 1
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    if from_beginning:
        consumer.seek_to_beginning(*assigned)
    else:
        consumer.seek_to_end(*assigned)
    print(f"following {topic} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    shown = 0
    idle_since = time.monotonic()
    try:
        while True:
            batches = consumer.poll(timeout_ms=500)
            if not batches:
                if timeout and time.monotonic() - idle_since > timeout:
                    return 0
                continue
            idle_since = time.monotonic()
            for records in batches.values():
                for record in records:
                    try:
                        _, event = decode_event(record.headers, record.value)
                    except EnvelopeError as error:
                        print(f"undecodable record at offset {record.offset}: {error}", flush=True)
                        continue
                    if not isinstance(event, delivery_pb2.PartnerDelivery):
                        continue
                    if as_json:
                        print(json_format.MessageToJson(event, indent=None), flush=True)
                    else:
                        print(describe(event), flush=True)
                    shown += 1
                    if limit and shown >= limit:
                        return 0
    finally:
        consumer.close()
