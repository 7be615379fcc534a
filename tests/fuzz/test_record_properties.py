"""Property-based tests of every consumer of Kafka records under bad input.

In-process (fast, 10,000 generated records per consumer), through the harnesses of
`devstack.fuzz` that the coverage-guided fuzzer uses too:

- the router (`ReferralRouter.handle` under the default policy, after the trace-context
  extraction its faust agent does) never raises, and returns either routing output — every
  record decodes with `decode_event`, inbox records are PartnerDeliveries for the partner the
  topic names, exactly one ReferralRouted — or exactly ONE dead letter keyed like the record,
  keeping its value and headers, with `dlq_topic`/`dlq_partition`/`dlq_offset`/`dlq_error`/
  `dlq_attempts` naming its origin and a clear reason, and nothing else (no partial publish);
- the downstream services' consume path (`EventConsumer._process` with the partner desk's
  handler and the enforcement / victim-services domain behind it) never lets an exception
  escape: a record is either handled (status reports on the partner's status topic only) or
  dead-lettered, once, with its origin, and nothing else is published.

On the real broker, against the whole running system: a few hundred generated poison records on
referrals.submitted and on two partner inboxes (one per downstream service) are each parked on
referrals.deadletter with their origin, a valid referral submitted after them is still routed
and acknowledged, and every service process is still alive.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2
from devstack.fuzz import PartnerHarness, RouterHarness, no_retry_pauses, seed_referral
from plumbing import topics
from referral.router import RawRecord
from tests.e2e.system import RunningSystem
from tests.fuzz import strategies
from tests.fuzz.strategies import KafkaRecord
from tests.kafka_reading import LandedRecord, read_until

IN_PROCESS_EXAMPLES = 10_000
POISON_ON_SUBMITTED = 240
POISON_PER_INBOX = 120
POISONED_INBOXES = (topics.inbox("hsi"), topics.inbox("hsi-vap"))
"""One inbox of each downstream service: enforcement serves hsi, victim services hsi-vap."""
BROKER_TIMEOUT_S = 120.0

FUZZ = strategies.fuzz_settings(IN_PROCESS_EXAMPLES)
PARTITIONS = st.integers(0, topics.PARTITIONS - 1)
OFFSETS = st.one_of(st.integers(0, 10), st.integers(0, 2**63 - 1))


def raw(topic: str, partition: int, offset: int, record: KafkaRecord) -> RawRecord:
    # Kafka headers may have null values; RawRecord's annotation is narrower than real records.
    return RawRecord(topic, partition, offset, record.key, record.value, cast(Any, record.headers))


# --- in-process properties ------------------------------------------------------------------------


def test_the_router_routes_or_dead_letters_every_record_exactly_once() -> None:
    router = RouterHarness()
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(strategies.submitted_records(), PARTITIONS, OFFSETS)
    def check(record: KafkaRecord, partition: int, offset: int) -> None:
        output = router.check(raw(topics.SUBMITTED, partition, offset, record))
        if any(r.topic == topics.DEAD_LETTER for r in output.records):
            outcome = "dead-lettered"
        elif output.records:
            outcome = "routed"
        else:
            outcome = "nothing to route"
        outcomes[outcome] += 1
        event(f"{record.kind}: {outcome}")

    check()

    assert sum(outcomes.values()) >= IN_PROCESS_EXAMPLES, outcomes
    assert outcomes["routed"] >= 1_000, outcomes
    assert outcomes["dead-lettered"] >= 5_000, outcomes


def test_the_partner_desks_handle_or_dead_letter_every_record() -> None:
    desks = PartnerHarness()
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(strategies.partner_records(), PARTITIONS, OFFSETS)
    def check(topic_and_record: tuple[str, KafkaRecord], partition: int, offset: int) -> None:
        topic, record = topic_and_record
        sent = desks.check(raw(topic, partition, offset, record))
        dead = [s for s in sent if s.topic == topics.DEAD_LETTER]
        if dead:
            error = dict(dead[0].headers)["dlq_error"].decode(errors="replace")
            outcome = "dead-lettered: " + error.split(":")[0]
        else:
            outcome = "handled"
        outcomes[outcome] += 1
        event(f"{record.kind}: {outcome}")

    with no_retry_pauses():
        check()

    assert sum(outcomes.values()) >= IN_PROCESS_EXAMPLES, outcomes
    assert outcomes["handled"] >= 1_000, outcomes
    assert outcomes["dead-lettered: undecodable record"] >= 3_000, outcomes
    assert outcomes["dead-lettered: rejected"] >= 100, outcomes


# --- regressions found by the fuzzers ---------------------------------------------------------

HUGE_REDRIVEN_ATTEMPTS = [("dlq_redriven_attempts", b"9" * 4_300)]
"""A redriven-attempts header of 4,300 digits once made formatting the attempt count raise
(Python's integer-string conversion limit) in `plumbing.kafka.dead_letter_headers`, which every
dead-lettering path calls; such a record stopped its consumer on every replay."""


def test_a_huge_redriven_attempts_header_is_dead_lettered_by_the_router() -> None:
    record = RawRecord(topics.SUBMITTED, 0, 1, b"k", b"garbage", HUGE_REDRIVEN_ATTEMPTS)
    RouterHarness().check(record)


def test_a_huge_redriven_attempts_header_is_dead_lettered_by_a_partner_desk() -> None:
    record = RawRecord(topics.inbox("hsi"), 0, 1, b"k", b"garbage", HUGE_REDRIVEN_ATTEMPTS)
    PartnerHarness().check(record)


# --- on the real broker, against the running system ---------------------------------------


def _collect_poison(
    records: st.SearchStrategy[Any],
    count: int,
    is_poison: Callable[[Any], bool],
) -> list[Any]:
    """`count` distinct generated records that the in-process harness dead-letters."""
    found: list[Any] = []

    @settings(FUZZ, max_examples=count * 3, phases=[Phase.generate])
    @given(records)
    def collect(item: Any) -> None:
        if len(found) < count and item not in found and is_poison(item):
            found.append(item)

    collect()
    assert len(found) == count, f"generated only {len(found)} poison records"
    return found


def _producible(record: KafkaRecord, key: bytes) -> tuple[bytes, bytes | None, list[Any]]:
    """kafka-python's producer cannot send null header values: they are sent empty instead."""
    headers = [(name, value if value is not None else b"") for name, value in record.headers]
    return key, record.value, headers


def _read_dead_letters(bootstrap: str, prefix: bytes, want: int) -> dict[bytes, list[Any]]:
    """Dead letters whose key starts with `prefix`, by key, once `want` distinct keys arrived."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partitions = [
            TopicPartition(topics.DEAD_LETTER, p)
            for p in consumer.partitions_for_topic(topics.DEAD_LETTER) or ()
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found: dict[bytes, list[Any]] = {}
        deadline = time.monotonic() + BROKER_TIMEOUT_S
        while len(found) < want:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"after {BROKER_TIMEOUT_S}s only {len(found)} of {want} poison records "
                    "were dead-lettered"
                )
            for batch in consumer.poll(timeout_ms=200).values():
                for letter in batch:
                    if letter.key and letter.key.startswith(prefix):
                        found.setdefault(letter.key, []).append(letter)
        return found
    finally:
        consumer.close()


@pytest.mark.broker
def test_poison_records_on_every_consumed_topic_are_parked_and_the_pipeline_goes_on(
    running_system: RunningSystem,
) -> None:
    bootstrap = running_system.bootstrap_servers
    run = uuid.uuid4().hex[:10]
    router, desks = RouterHarness(), PartnerHarness()

    def dead_by_router(record: KafkaRecord) -> bool:
        output = router.handle(raw(topics.SUBMITTED, 0, 0, record))
        return [r.topic for r in output.records] == [topics.DEAD_LETTER]

    def dead_at_desk(topic: str) -> Callable[[KafkaRecord], bool]:
        def is_poison(record: KafkaRecord) -> bool:
            with no_retry_pauses():
                sent = desks.process(raw(topic, 0, 0, record))
            return [s.topic for s in sent] == [topics.DEAD_LETTER]

        return is_poison

    batches: list[tuple[str, list[KafkaRecord]]] = [
        (
            topics.SUBMITTED,
            _collect_poison(
                strategies.submitted_records(well_formed=False),
                POISON_ON_SUBMITTED,
                dead_by_router,
            ),
        )
    ]
    for inbox in POISONED_INBOXES:
        partner = inbox.split(".")[1]
        records = strategies.kafka_records(strategies.deliveries_for(partner), well_formed=False)
        batches.append((inbox, _collect_poison(records, POISON_PER_INBOX, dead_at_desk(inbox))))

    # Publish every poison record with a unique key, remembering where it landed.
    prefix = f"poison-{run}-".encode()
    sent: dict[bytes, tuple[str, int, int, KafkaRecord]] = {}
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = []
        for topic, poison in batches:
            for index, record in enumerate(poison):
                key, value, headers = _producible(record, prefix + f"{topic}-{index}".encode())
                future = producer.send(topic, key=key, value=value, headers=headers)
                futures.append((key, topic, record, future))
        producer.flush(timeout=60)
        for key, topic, record, future in futures:
            metadata = future.get(timeout=60)
            sent[key] = (topic, metadata.partition, metadata.offset, record)
    finally:
        producer.close()
    assert len(sent) == POISON_ON_SUBMITTED + POISON_PER_INBOX * len(POISONED_INBOXES)

    # Then a valid referral: it must still be routed and acknowledged.
    request = intake_pb2.SubmitReferralRequest(referral=seed_referral())
    request.referral.source_reference = f"fuzz-after-poison-{run}"
    referral_id = running_system.intake().SubmitReferral(request, timeout=30).referral_id

    # Every poison record is parked with its origin (at least once: delivery is at-least-once).
    letters = _read_dead_letters(bootstrap, prefix, len(sent))
    assert set(letters) == set(sent)
    for key, (topic, partition, offset, record) in sent.items():
        for letter in letters[key]:
            meta = dict(letter.headers)
            assert meta["dlq_topic"] == topic.encode(), key
            assert meta["dlq_partition"] == str(partition).encode(), key
            assert meta["dlq_offset"] == str(offset).encode(), key
            assert meta["dlq_error"].startswith(
                (b"undecodable record: ", b"routing failed: ", b"rejected: ", b"handler failed: ")
            ), (key, meta["dlq_error"][:80])
            assert int(meta["dlq_attempts"]) >= 1, key
            assert (letter.value or b"") == (record.value or b""), key

    # The pipeline went on: the valid referral was routed, delivered and acknowledged.
    def mine(landed: LandedRecord) -> bool:
        return landed.key == referral_id

    def routed_and_acknowledged(kept: list[LandedRecord]) -> bool:
        delivered = {
            r.event.partner for r in kept if isinstance(r.event, lifecycle_pb2.ReferralDelivered)
        }
        acknowledged = {
            r.event.report.partner
            for r in kept
            if isinstance(r.event, delivery_pb2.DeliveryStatusReported)
            and r.event.report.state == lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED
        }
        routed = any(isinstance(r.event, lifecycle_pb2.ReferralRouted) for r in kept)
        return routed and bool(delivered) and delivered <= acknowledged

    policy_partners = sorted(strategies.PARTNERS)
    read_until(
        bootstrap,
        [topics.LIFECYCLE, *(topics.status(p) for p in policy_partners)],
        keep=mine,
        want=routed_and_acknowledged,
        timeout=BROKER_TIMEOUT_S,
    )

    # Nothing crashed.
    for name, service in running_system.stack.running.items():
        assert service.process.poll() is None, f"{name} exited with {service.process.returncode}"
