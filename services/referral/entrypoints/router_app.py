"""The router as a faust-streaming agent: `python -m referral router`.

faust owns consumption, partition assignment and offset commits; the agent hands each record to
the ReferralRouter and waits until Kafka has acknowledged every record it produced before taking
the next one, so an offset is only committed after its outputs are safe (at least once; the
stable delivery ids make a replay recognisable). faust's exactly_once mode is not used: it has
open duplicate bugs, and idempotent outputs make it unnecessary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from plumbing import config, topics
from plumbing.runtime import configure_logging
from plumbing.telemetry import configure_tracing, extract_trace_context, shutdown_tracing
from referral.adapters.referral_state import decode_state, encode_state
from referral.domain.deadlines import parse_deadlines
from referral.domain.followups import ReferralState
from referral.domain.policy import default_policy_path, load_policy
from referral.router import Correlated, RawRecord, ReferralRouter

SERVICE_NAME = "referral-router"
log = logging.getLogger(__name__)
tracer = trace.get_tracer("ctroute.referral.router")


def _header_list(
    headers: Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None,
) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


class TableRoutedRevisions:
    """RoutedRevisions over a faust table: referral id -> revisions, newline-separated."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def seen(self, referral_id: str, revision: str) -> bool:
        known: bytes | None = self._table.get(referral_id.encode())
        return known is not None and revision.encode() in known.split(b"\n")

    def remember(self, referral_id: str, revision: str) -> None:
        key = referral_id.encode()
        known: bytes | None = self._table.get(key)
        self._table[key] = revision.encode() if known is None else known + b"\n" + revision.encode()


class TableReferralStates:
    """ReferralStates over a faust table: referral id -> the router's record of it (JSON)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, referral_id: str) -> ReferralState | None:
        known: bytes | None = self._table.get(referral_id.encode())
        return decode_state(known) if known is not None else None

    def put(self, referral_id: str, state: ReferralState) -> None:
        self._table[referral_id.encode()] = encode_state(state)


class TableCorrelationIndex:
    """CorrelationIndex over a faust global table (every router instance holds all of it)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def referrals_sharing(self, fingerprints: frozenset[str]) -> set[str]:
        found: set[str] = set()
        for fingerprint in fingerprints:
            known: bytes | None = self._table.get(f"fp:{fingerprint}".encode())
            if known:
                found.update(known.decode().split("\n"))
        return found

    def recipients_of(self, referral_id: str) -> frozenset[str]:
        known: bytes | None = self._table.get(f"rcp:{referral_id}".encode())
        return frozenset(known.decode().split(",")) if known else frozenset()

    def learn(self, correlated: Correlated) -> None:
        for fingerprint in correlated.fingerprints:
            key = f"fp:{fingerprint}".encode()
            known: bytes | None = self._table.get(key)
            ids = set(known.decode().split("\n")) if known else set()
            if correlated.referral_id not in ids:
                ids.add(correlated.referral_id)
                self._table[key] = "\n".join(sorted(ids)).encode()
        self._table[f"rcp:{correlated.referral_id}".encode()] = ",".join(
            sorted(correlated.recipients)
        ).encode()


def build_app(bootstrap_servers: str, router: ReferralRouter) -> faust.App:
    """The faust app with the routing agent on the submitted topic."""
    app = faust.App(
        router.group_id,
        broker=",".join(f"kafka://{server}" for server in bootstrap_servers.split(",")),
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_partitions=topics.PARTITIONS,
        web_enabled=False,
        store="memory://",
        broker_commit_interval=0.5,
        # A crashed instance's partitions move to a live one after this long without heartbeats.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
    )
    submitted = app.topic(topics.SUBMITTED, key_type=bytes, value_type=bytes)
    # Referral id -> revisions already routed. Backed by a changelog topic that faust creates
    # (referral-router-routed-revisions-changelog) and partitioned like the submitted topic, so a
    # replayed record finds its revision after a crash or on the instance it moved to.
    routed_table = app.Table(
        "routed-revisions",
        partitions=topics.PARTITIONS,
        key_type=bytes,
        value_type=bytes,
    )
    routed = TableRoutedRevisions(routed_table)
    # Referral id -> what the router remembers of it: the source's latest content, the consent
    # changes recorded after submission, and what each partner holds. Partitioned like the
    # submitted topic, where every event of a referral (amendment, withdrawal, consent, re-route)
    # is keyed by its id, so the record is on the instance that handles the referral's events.
    # Its changelog (referral-router-referral-state-changelog) holds the referral's content, as
    # the submitted topic does, and is compacted: only the latest record per referral is kept.
    states_table = app.Table(
        "referral-state",
        partitions=topics.PARTITIONS,
        key_type=bytes,
        value_type=bytes,
    )
    states = TableReferralStates(states_table)
    # Fingerprint -> referral ids and referral id -> recipients, for correlation. A global table:
    # a referral on any partition must see referrals that arrived on every other partition.
    correlation_table = app.GlobalTable(
        "correlation-index",
        partitions=topics.PARTITIONS,
        key_type=bytes,
        value_type=bytes,
    )
    index = TableCorrelationIndex(correlation_table)
    outputs: dict[str, Any] = {}

    def output_topic(name: str) -> Any:
        if name not in outputs:
            outputs[name] = app.topic(name, key_type=bytes, value_type=bytes)
        return outputs[name]

    async def route_referrals(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            headers = _header_list(message.headers)
            record = RawRecord(
                message.topic, message.partition, message.offset, message.key, event.value, headers
            )
            with tracer.start_as_current_span(
                f"{topics.SUBMITTED} process",
                context=extract_trace_context(headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": message.topic,
                    "messaging.kafka.destination.partition": message.partition,
                    "messaging.kafka.message.offset": message.offset,
                    "messaging.consumer.group.name": router.group_id,
                },
            ):
                output = router.handle(record, routed, index, states)
            pending = [
                await output_topic(out.topic).send(
                    key=out.key.encode(), value=out.value, headers=out.headers, force=True
                )
                for out in output.records
            ]
            await asyncio.gather(*pending)
            if output.correlated is not None:
                index.learn(output.correlated)
            if output.state is not None:
                states.put(*output.state)
            if output.routed is not None:
                routed.remember(*output.routed)
            if output.state is not None or output.routed is not None:
                # Table writes reach their changelogs through faust's send-soon buffer. Waiting
                # until Kafka has them before the next record means a crash loses at most the
                # record in hand (replayed, and skipped or redone with the same ids), never an
                # earlier one whose offset may already be committed: a referral's record lost
                # that way would leave its later withdrawal or consent withdrawal with nobody to
                # notify.
                await app.producer.flush()

    app.agent(submitted, name="route-referrals")(route_referrals)
    return app


def main() -> None:
    configure_logging(SERVICE_NAME)
    provider = configure_tracing(SERVICE_NAME)
    policy = load_policy(config.policy_path() or default_policy_path())
    log.info("router starting with policy version %s", policy.version)
    router = ReferralRouter(
        policy,
        correlation_key=config.correlation_key(),
        deadlines=parse_deadlines(config.acknowledgement_deadlines()),
    )
    app = build_app(config.kafka_bootstrap_servers(), router)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, override_logging=False)
    try:
        worker.execute_from_commandline()
    finally:
        shutdown_tracing(provider)
