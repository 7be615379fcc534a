"""Bad records on the submitted topic are parked with their origin and the pipeline keeps going;
an operator lists them and redrives one, and the redrive is recorded for auditors.

Everything runs on the real broker against the real router process. The bad records are not
contract events, so the dead-letter and submitted topics are read raw here (the helpers in
`tests.kafka_reading` decode every record). Keys are unique per run, so other tests' records
and earlier runs on the shared broker never match.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ctroute.operations.v1 import dead_letter_pb2
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2
from plumbing import topics
from refctl.__main__ import main as refctl
from tests.e2e.system import RunningSystem
from tests.kafka_reading import LandedRecord, end_offsets, read_until

pytestmark = pytest.mark.broker

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"
ROUTER_GROUP = "referral-router"
OPERATOR = "e2e-operator"
TIMEOUT_S = 45.0


def ce_headers(event_type: str) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", f"evt-{uuid.uuid4()}".encode()),
        ("ce_source", b"tests/e2e"),
        ("ce_type", event_type.encode()),
        ("ce_time", datetime.now(UTC).isoformat().encode()),
        ("content-type", b"application/protobuf"),
    ]


def read_raw_until(
    bootstrap_servers: str,
    topic: str,
    *,
    keep: Callable[[Any], bool],
    want: Callable[[list[Any]], bool],
    timeout: float = TIMEOUT_S,
) -> list[Any]:
    """Raw records of `topic` from the beginning until `want(kept)` holds; fails at the deadline."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        kept: list[Any] = []
        deadline = time.monotonic() + timeout
        while not want(kept):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s reading {topic}; kept {len(kept)} records"
                )
            for records in consumer.poll(timeout_ms=200).values():
                kept.extend(record for record in records if keep(record))
        return kept
    finally:
        consumer.close()


def headers_of(record: Any) -> dict[str, bytes]:
    return {k: v for k, v in record.headers or []}


def dead_letters_of(bootstrap: str, key: bytes, count: int) -> list[Any]:
    letters = read_raw_until(
        bootstrap,
        topics.DEAD_LETTER,
        keep=lambda r: r.key == key,
        want=lambda kept: len(kept) >= count,
    )
    assert len(letters) == count, f"{len(letters)} dead letters for {key!r}, expected {count}"
    return sorted(letters, key=lambda r: (r.partition, r.offset))


def id_of(record: Any) -> str:
    return f"{record.partition}:{record.offset}"


def test_bad_records_are_parked_listed_and_redriven_while_routing_continues(
    running_system: RunningSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = running_system.bootstrap_servers
    run = uuid.uuid4().hex[:12]
    canary = f"canary-{run}".encode()
    bad = {
        "garbage": (
            f"dlq-{run}-garbage".encode(),
            b"\xff\xff\xff\xff" + canary,
            ce_headers(lifecycle_pb2.ReferralSubmitted.DESCRIPTOR.full_name),
            "undecodable record: value is not a valid ctroute.referral.v1.ReferralSubmitted",
        ),
        "no-headers": (
            f"dlq-{run}-no-headers".encode(),
            b"not an event " + canary,
            [],
            "undecodable record: header ce_id is missing",
        ),
        "foreign-type": (
            f"dlq-{run}-foreign-type".encode(),
            b"\x0a\x03abc",
            ce_headers("com.example.orders.v1.OrderPlaced"),
            "undecodable record: event type 'com.example.orders.v1.OrderPlaced' is not part "
            "of the ctroute contract",
        ),
    }

    # One bad record per partition, so whichever partition the valid referral lands on, a bad
    # record is ahead of it there.
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        partitions = sorted(producer.partitions_for(topics.SUBMITTED))
        sent = {
            name: producer.send(
                topics.SUBMITTED,
                key=key,
                value=value,
                headers=headers,
                partition=partitions[i % len(partitions)],
            ).get(timeout=TIMEOUT_S)
            for i, (name, (key, value, headers, _)) in enumerate(bad.items())
        }
    finally:
        producer.close()

    request = json_format.Parse(
        (DEMO / "03-forced-labor-goods.json").read_text(), intake_pb2.SubmitReferralRequest()
    )
    request.referral.source_reference = f"e2e-dlq-{run}"
    referral_id: str = running_system.intake().SubmitReferral(request, timeout=15).referral_id

    # Each bad record is parked with its origin, the error and the attempts, bytes unchanged.
    parked = {}
    for name, (key, value, headers, error) in bad.items():
        (letter,) = dead_letters_of(bootstrap, key, 1)
        meta = headers_of(letter)
        assert meta["dlq_topic"] == topics.SUBMITTED.encode()
        assert meta["dlq_partition"] == str(sent[name].partition).encode()
        assert meta["dlq_offset"] == str(sent[name].offset).encode()
        assert meta["dlq_error"].decode() == error
        assert meta["dlq_attempts"] == b"1"
        assert meta["dlq_consumer_group"] == ROUTER_GROUP.encode()
        assert datetime.fromisoformat(meta["dlq_time"].decode()).tzinfo is not None
        assert letter.value == value
        assert [(k, v) for k, v in letter.headers if not k.startswith("dlq_")] == headers
        parked[name] = letter

    # The pipeline continues: the valid referral submitted right after them is routed.
    def is_mine(record: LandedRecord) -> bool:
        return record.key == referral_id

    routed = read_until(
        bootstrap,
        [topics.LIFECYCLE],
        keep=is_mine,
        want=lambda kept: any(isinstance(r.event, lifecycle_pb2.ReferralRouted) for r in kept),
        timeout=TIMEOUT_S,
    )
    assert any(isinstance(r.event, lifecycle_pb2.ReferralRouted) for r in routed)

    # `refctl dlq list` shows them, one line each, never the value.
    capsys.readouterr()
    assert refctl(["dlq", "list", "--bootstrap-servers", bootstrap, "--limit", "0"]) == 0
    listing = capsys.readouterr().out
    assert canary.decode() not in listing
    for name, letter in parked.items():
        (line,) = [line for line in listing.splitlines() if f"key={letter.key.decode()}" in line]
        assert line.startswith(f"{id_of(letter)} ")
        assert f" {topics.SUBMITTED}[{sent[name].partition}]@{sent[name].offset} " in line
        assert f" group={ROUTER_GROUP} attempts=1 " in line
        assert line.endswith(f" error={bad[name][3]}")
    assert "type=ctroute.referral.v1.ReferralSubmitted key=" + f"dlq-{run}-garbage" in listing
    assert f"type=- key=dlq-{run}-no-headers" in listing

    assert refctl(["dlq", "list", "--bootstrap-servers", bootstrap, "--json", "--limit", "0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_key = {row["key"]: row for row in rows}
    garbage = parked["garbage"]
    assert by_key[garbage.key.decode()] == {
        "id": id_of(garbage),
        "time": by_key[garbage.key.decode()]["time"],
        "topic": topics.SUBMITTED,
        "partition": sent["garbage"].partition,
        "offset": sent["garbage"].offset,
        "consumer_group": ROUTER_GROUP,
        "attempts": 1,
        "event_type": lifecycle_pb2.ReferralSubmitted.DESCRIPTOR.full_name,
        "key": garbage.key.decode(),
        "redriven_from": None,
        "error": bad["garbage"][3],
    }

    # Redriving the garbage puts the original record back on the submitted topic ...
    garbage_id = id_of(garbage)
    redrive = ["dlq", "redrive", garbage_id, "--operator", OPERATOR, "--bootstrap-servers"]
    assert refctl([*redrive, bootstrap]) == 0
    said = capsys.readouterr().out
    assert f"redrove dead letter {garbage_id}" in said
    assert f"recorded DeadLetterRedriven by {OPERATOR}" in said

    (republished,) = read_raw_until(
        bootstrap,
        topics.SUBMITTED,
        keep=lambda r: r.key == garbage.key and "dlq_redriven_from" in headers_of(r),
        want=bool,
    )
    assert republished.value == bad["garbage"][1]
    assert republished.headers == [
        *bad["garbage"][2],
        ("dlq_redriven_from", garbage_id.encode()),
        ("dlq_redriven_attempts", b"1"),
    ]
    assert (
        f"republished to {topics.SUBMITTED}[{republished.partition}]@{republished.offset}" in said
    )

    # ... records who did it on the lifecycle topic, keyed like the record ...
    (audit,) = read_until(
        bootstrap,
        [topics.LIFECYCLE],
        keep=lambda r: r.key == garbage.key.decode(),
        want=bool,
        timeout=TIMEOUT_S,
    )
    event = audit.event
    assert isinstance(event, dead_letter_pb2.DeadLetterRedriven)
    assert event.operator == OPERATOR
    assert event.dead_letter_id == garbage_id
    assert (event.original_topic, event.original_partition, event.original_offset) == (
        topics.SUBMITTED,
        sent["garbage"].partition,
        sent["garbage"].offset,
    )
    assert event.attempts == 1
    assert (event.republished_topic, event.republished_partition, event.republished_offset) == (
        topics.SUBMITTED,
        republished.partition,
        republished.offset,
    )
    assert audit.headers["ce_type"] == event.DESCRIPTOR.full_name.encode()

    # ... and garbage stays garbage: it is parked again, now with two attempts.
    first, second = dead_letters_of(bootstrap, garbage.key, 2)
    assert first.offset == garbage.offset
    again = headers_of(second)
    assert again["dlq_attempts"] == b"2"
    assert again["dlq_redriven_from"] == garbage_id.encode()
    assert again["dlq_partition"] == str(republished.partition).encode()
    assert again["dlq_offset"] == str(republished.offset).encode()
    assert refctl(["dlq", "list", "--bootstrap-servers", bootstrap, "--limit", "0"]) == 0
    (line,) = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(id_of(second) + " ")
    ]
    assert " attempts=2 " in line
    assert f" redriven-from={garbage_id} " in line

    # Redriving the same ID again is refused (nothing is republished) unless the operator insists.
    submitted_before = end_offsets(bootstrap, topics.SUBMITTED)
    assert refctl([*redrive, bootstrap]) == 1
    refused = capsys.readouterr().err
    assert f"dead letter {garbage_id} was already redriven" in refused
    assert f"by {OPERATOR} to {topics.SUBMITTED}[{republished.partition}]" in refused
    assert "--yes" in refused
    assert end_offsets(bootstrap, topics.SUBMITTED) == submitted_before

    assert refctl([*redrive, bootstrap, "--yes"]) == 0
    assert "recorded DeadLetterRedriven" in capsys.readouterr().out
    third = dead_letters_of(bootstrap, garbage.key, 3)[2]
    # Redriven again from the first dead letter (1 attempt), it fails once more: 2 attempts.
    assert headers_of(third)["dlq_attempts"] == b"2"


def test_redriving_a_dead_letter_that_does_not_exist_is_refused(
    running_system: RunningSystem, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = running_system.bootstrap_servers
    for missing, expected in (
        ("0:999999999", "no dead letter 0:999999999: partition 0 of referrals.deadletter holds"),
        (
            "99:0",
            f"no dead letter 99:0: referrals.deadletter has partitions 0-{topics.PARTITIONS - 1}",
        ),
    ):
        code = refctl(
            ["dlq", "redrive", missing, "--operator", OPERATOR, "--bootstrap-servers", bootstrap]
        )
        assert code == 1
        assert expected in capsys.readouterr().err
