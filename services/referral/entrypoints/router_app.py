"""The router's consume loop: `python -m referral router`.

A kafka-python consumer in the `referral-router` group reads the submitted topic; each batch goes
through the ReferralRouter inside one Kafka transaction that holds everything the batch leads to:
the deliveries, lifecycle events and dead letters it produced, what the router learned (routed
revisions, referral states, the correlation index, written to its changelog topics) and the
batch's consumer offsets. The transaction commits all of it or none of it:

* a crash, a broker outage or a rebalance in the middle aborts the batch: no partner reading
  committed records (every consumer of this system does) sees any of it, the offsets stay where
  they were, and the batch is routed again, by this instance after it rewinds or by the one that
  took its partitions over. Nothing is lost and no delivery is made twice;
* a router instance that lost its partitions but does not know it yet cannot commit: its
  transaction carries its group generation, which the broker checks (KIP-447).

The router's memory is restored from its changelogs, reading committed records only, on every
partition assignment and after an aborted batch, before a record of the partition is processed
(see ``plumbing.changelog``); the routed revisions remembered there are the second line of
defence: a record routed and committed is skipped if it is ever read again.

faust-streaming ran this loop before; under load, a faust worker taking over a crashed
instance's partitions committed offsets past records it had never routed (faust-streaming
issues #216, #221, #606), which the chaos tests caught. This loop is small enough to prove.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from plumbing import config, topics
from plumbing.changelog import ChangelogReader, GlobalTable, PartitionedTable
from plumbing.kafka import (
    consumer_settings,
    poll_riding_out_outages,
    process_span_attributes,
    security_settings,
)
from plumbing.runtime import configure_logging, stop_on_signals
from plumbing.telemetry import (
    configure_tracing,
    extract_trace_context,
    restamp_trace_context,
    shutdown_tracing,
)
from referral.adapters.referral_state import decode_state, encode_state
from referral.domain.deadlines import parse_deadlines
from referral.domain.followups import ReferralState
from referral.domain.policy import default_policy_path, load_policy
from referral.router import Correlated, RawRecord, ReferralRouter

SERVICE_NAME = "referral-router"
ROUTED_REVISIONS, CORRELATION_INDEX, REFERRAL_STATE = topics.ROUTER_STATE
TRANSACTION_TIMEOUT_MS = 15_000
"""How long the broker keeps a crashed instance's open transaction before aborting it. Partners
read committed records only, so until then that batch's partitions wait: keep it short."""
log = logging.getLogger(__name__)
tracer = trace.get_tracer("ctroute.referral.router")


class TableRoutedRevisions:
    """RoutedRevisions over a table: referral id -> revisions, newline-separated."""

    def __init__(self, table: PartitionedTable) -> None:
        self._table = table

    def seen(self, referral_id: str, revision: str) -> bool:
        known = self._table.get(referral_id.encode())
        return known is not None and revision.encode() in known.split(b"\n")

    def remember(self, referral_id: str, revision: str) -> None:
        key = referral_id.encode()
        known = self._table.get(key)
        self._table[key] = revision.encode() if known is None else known + b"\n" + revision.encode()


class TableReferralStates:
    """ReferralStates over a table: referral id -> the router's record of it (JSON)."""

    def __init__(self, table: PartitionedTable) -> None:
        self._table = table

    def get(self, referral_id: str) -> ReferralState | None:
        known = self._table.get(referral_id.encode())
        return decode_state(known) if known is not None else None

    def put(self, referral_id: str, state: ReferralState) -> None:
        self._table[referral_id.encode()] = encode_state(state)


def merge_correlation(key: bytes, held: bytes | None, written: bytes) -> bytes:
    """Union of two values of the correlation index: both only ever grow.

    ``fp:<fingerprint>`` holds newline-separated referral ids, ``rcp:<referral id>`` its
    comma-separated recipients. Merging (instead of replacing) makes an old value read back after
    a newer one, or two instances learning about one fingerprint at once, lose nothing.
    """
    separator = b"," if key.startswith(b"rcp:") else b"\n"
    members = set(written.split(separator))
    if held:
        members.update(held.split(separator))
    members.discard(b"")
    return separator.join(sorted(members))


class TableCorrelationIndex:
    """CorrelationIndex over a global table (every router instance holds all of it)."""

    def __init__(self, table: GlobalTable) -> None:
        self._table = table

    def referrals_sharing(self, fingerprints: frozenset[str]) -> set[str]:
        found: set[str] = set()
        for fingerprint in fingerprints:
            known = self._table.get(f"fp:{fingerprint}".encode())
            if known:
                found.update(known.decode().split("\n"))
        return found

    def recipients_of(self, referral_id: str) -> frozenset[str]:
        known = self._table.get(f"rcp:{referral_id}".encode())
        return frozenset(known.decode().split(",")) if known else frozenset()

    def learn(self, correlated: Correlated) -> None:
        for fingerprint in correlated.fingerprints:
            key = f"fp:{fingerprint}".encode()
            known = self._table.get(key)
            if known is None or correlated.referral_id.encode() not in known.split(b"\n"):
                self._table[key] = correlated.referral_id.encode()
        self._table[f"rcp:{correlated.referral_id}".encode()] = ",".join(
            sorted(correlated.recipients)
        ).encode()


class PublishFailed(Exception):
    """Kafka did not take a record of the batch; the transaction must not commit."""


class RestoreOnAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Keeps the router's memory to the partitions it holds, restored before their records."""

    def __init__(self, tables: list[PartitionedTable], reader: ChangelogReader) -> None:
        self._tables = tables
        self._reader = reader

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        # Offsets are committed after every batch, before the next poll (where a rebalance
        # happens), so there is nothing to finish here.
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == topics.SUBMITTED}
        for table in self._tables:
            for partition in table.held_partitions() - mine:
                table.forget(partition)
        restored = self._reader.restore(self._tables, mine)
        log.info("partitions assigned: %s; %d changelog records read", sorted(mine), restored)


class RouterWorker:
    """The consume loop around a ReferralRouter (see the module docstring for its guarantees)."""

    def __init__(self, bootstrap_servers: str, router: ReferralRouter) -> None:
        self.router = router
        self._bootstrap_servers = bootstrap_servers
        self.routed_table = PartitionedTable(ROUTED_REVISIONS)
        self.state_table = PartitionedTable(REFERRAL_STATE)
        self.correlation_table = GlobalTable(CORRELATION_INDEX, merge_correlation)
        self.routed = TableRoutedRevisions(self.routed_table)
        self.states = TableReferralStates(self.state_table)
        self.index = TableCorrelationIndex(self.correlation_table)
        self._restorer = ChangelogReader(self._reader_consumer("restore"))
        self._follower = ChangelogReader(self._reader_consumer("correlation"))
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=router.group_id,
            # One client id per process: an operator (and the test harness) can tell a
            # restarted router from the member it replaced.
            client_id=f"{router.group_id}-{config.instance_id()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=500,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            **consumer_settings(),
        )
        self._producer = self._transactional_producer()

    def _reader_consumer(self, purpose: str) -> KafkaConsumer:
        return KafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=f"{SERVICE_NAME}-{purpose}-{config.instance_id()}",
            group_id=None,
            enable_auto_commit=False,
            **consumer_settings(),
        )

    def _transactional_producer(self) -> KafkaProducer:
        """A producer whose transactional id is this instance's: starting it aborts whatever
        transaction an earlier producer of the same instance left open."""
        producer = KafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=f"{SERVICE_NAME}-{config.instance_id()}",
            transactional_id=f"{self.router.group_id}-{config.instance_id()}",
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            **security_settings(),
        )
        producer.init_transactions()
        return producer

    def run(self, stop: threading.Event) -> None:
        """Route until `stop` is set; the batch in hand is finished and committed first."""
        try:
            self._follower.follow(self.correlation_table)
            learned = self._follower.restore_global(self.correlation_table)
            log.info("correlation index restored: %d changelog records read", learned)
            self._consumer.subscribe(
                topics=[topics.SUBMITTED],
                listener=RestoreOnAssignment([self.routed_table, self.state_table], self._restorer),
            )
            while not stop.is_set():
                batches = poll_riding_out_outages(self._consumer, stop)
                if not batches:
                    continue
                self._follower.catch_up(self.correlation_table)
                records = [record for batch in batches.values() for record in batch]
                try:
                    self._route_in_transaction(records)
                except (KafkaError, PublishFailed) as error:
                    log.warning(
                        "batch of %d records aborted (%s); routing it again",
                        len(records),
                        type(error).__name__,
                    )
                    self._rewind(stop)
        finally:
            self._consumer.close(autocommit=False)
            self._restorer.close()
            self._follower.close()
            self._producer.close()

    def _route_in_transaction(self, records: list[Any]) -> None:
        self._producer.begin_transaction()
        sent: list[FutureRecordMetadata] = []
        next_offsets: dict[TopicPartition, int] = {}
        for record in records:
            self.routed_table.partition = record.partition
            self.state_table.partition = record.partition
            self.correlation_table.partition = record.partition
            sent += self._route_one(record)
            next_offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
        for write in [
            *self.correlation_table.take_writes(),
            *self.state_table.take_writes(),
            *self.routed_table.take_writes(),
        ]:
            sent.append(
                self._producer.send(
                    write.topic, key=write.key, value=write.value, partition=write.partition
                )
            )
        self._producer.flush()
        failed = [future for future in sent if future.failed()]
        if failed:
            raise PublishFailed(
                f"{len(failed)} of {len(sent)} records not published: "
                f"{type(failed[0].exception).__name__}"
            )
        self._producer.send_offsets_to_transaction(
            {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in next_offsets.items()},
            self._consumer.group_metadata(),
        )
        self._producer.commit_transaction()

    def _route_one(self, record: Any) -> list[FutureRecordMetadata]:
        headers = [(k, v) for k, v in (record.headers or []) if v is not None]
        raw = RawRecord(
            record.topic, record.partition, record.offset, record.key, record.value, headers
        )
        with tracer.start_as_current_span(
            f"{record.topic} process",
            context=extract_trace_context(headers),
            kind=SpanKind.CONSUMER,
            attributes=process_span_attributes(record, self.router.group_id),
        ):
            output = self.router.handle(raw, self.routed, self.index, self.states)
            # One producer span for the record's outputs (not one per output record: spans were
            # a third of the router's CPU), its context on every record sent. A dead letter
            # keeps the headers it came with, trace context included.
            published = [out for out in output.records if out.topic != topics.DEAD_LETTER]
            if published:
                with tracer.start_as_current_span(
                    "publish",
                    kind=SpanKind.PRODUCER,
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.operation.type": "publish",
                        "messaging.batch.message_count": len(published),
                        "ctroute.destinations": sorted({out.topic for out in published}),
                    },
                ):
                    for out in published:
                        restamp_trace_context(out.headers)
        sent = [
            self._producer.send(out.topic, key=out.key, value=out.value, headers=out.headers)
            for out in output.records
        ]
        # Remembered now, so the batch's later records see it; durable when the batch commits.
        if output.correlated is not None:
            self.index.learn(output.correlated)
        if output.state is not None:
            self.states.put(*output.state)
        if output.routed is not None:
            self.routed.remember(*output.routed)
        return sent

    def _rewind(self, stop: threading.Event) -> None:
        """After an aborted batch: abort the transaction (or replace the producer, which aborts
        it), drop the memory the batch changed, restore it from the committed changelog and
        seek back to the committed offsets. Retried until it works: a broker outage is the
        usual reason to be here."""
        delay = 0.5
        while not stop.is_set():
            try:
                self._abort()
                for table in (self.routed_table, self.state_table):
                    table.take_writes()
                self.correlation_table.take_writes()
                held = self._held_partitions()
                for table in (self.routed_table, self.state_table):
                    for partition in table.held_partitions():
                        table.forget(partition)
                self._restorer.restore([self.routed_table, self.state_table], held)
                for tp in self._consumer.assignment():
                    committed = self._consumer.committed(tp)
                    if committed is None:
                        self._consumer.seek_to_beginning(tp)
                    else:
                        self._consumer.seek(tp, committed)
                return
            except (KafkaError, TimeoutError) as error:
                log.warning("rewind failed (%s); retrying", type(error).__name__)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction()
        except KafkaError as error:
            # Fenced or in a fatal state: a new producer with the same transactional id aborts
            # the open transaction when it starts.
            log.warning("abort failed (%s); replacing the producer", type(error).__name__)
            self._producer.close(timeout=0)
            self._producer = self._transactional_producer()

    def _held_partitions(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment() if tp.topic == topics.SUBMITTED}


def main() -> None:
    configure_logging(SERVICE_NAME)
    provider = configure_tracing(SERVICE_NAME)
    stop = stop_on_signals()
    policy = load_policy(config.policy_path() or default_policy_path())
    log.info("router starting with policy version %s", policy.version)
    router = ReferralRouter(
        policy,
        correlation_key=config.correlation_key(),
        deadlines=parse_deadlines(config.acknowledgement_deadlines()),
    )
    try:
        RouterWorker(config.kafka_bootstrap_servers(), router).run(stop)
    finally:
        shutdown_tracing(provider)
