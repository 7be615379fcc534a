"""Runs the timeline service: `python -m referral timeline [--rebuild]`.

Operators need to see where a referral stands and how it got there without reading topics. This
service follows `referrals.lifecycle`, `referrals.submitted` and every `partner.<id>.status`
topic (consumer group `referral-timeline`), keeps each referral's events in the trace store, and
answers `ReferralQueryService` (GetReferral, ListReferrals) over gRPC on
`REFERRAL_QUERY_GRPC_ADDR`; `refctl trace` and `refctl referrals` are its clients.

What is kept of a record is decided here, field by field, and is operational only: of a
`ReferralSubmitted` just the referral id, source and receipt time; of a partner's report never
its note; of an amendment or withdrawal never the content or the reason. A contract type this
service does not know yet is kept only as "this happened" with the ids its operational fields
give. Nothing else reaches the store, the answers, the logs or the spans.

The service is an observer. A record it cannot decode is left to the topic's own consumers (the
router, the tracker), which dead-letter it: a second dead letter per observer would show every
bad record twice to operators. A record it cannot store stops the service instead of being
skipped, so the offset is not committed and the record is read again after the restart.

Rebuild (`--rebuild`) drops the store, then replays the topics from their beginning up to their
end at that moment, with a consumer that belongs to no group, and exits. It is a separate run
rather than a reset of the `referral-timeline` group's offsets because a reset is refused while
the group has members and would make the running service read everything again: this way the
service may keep running (or be started afterwards) and continues from its own offsets. Events
are stored by CloudEvents id, so what both the replay and the service read is stored once, and
what the service stores after the drop is kept.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from kafka import KafkaConsumer, TopicPartition

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2, query_pb2, query_pb2_grpc, referral_pb2
from plumbing import clock as service_clock
from plumbing import config, topics
from plumbing.envelope import Envelope, EnvelopeError, decode_event
from plumbing.grpc_server import TracingInterceptor, abort_invalid, start_grpc_server
from plumbing.kafka import ConsumedEvent, EventConsumer, EventPublisher, consumer_settings
from plumbing.runtime import configure_logging, stop_on_signals
from plumbing.sensitivity import class_value, sensitivity_of
from plumbing.telemetry import configure_tracing, shutdown_tracing, trace_id_of_headers
from plumbing.validation import violations_of
from referral.adapters.trace_store import TraceStore, open_trace_store
from referral.domain.lifecycle import DeliveryState
from referral.domain.timeline import (
    DeliveryStatus,
    ReferralSummary,
    ReferralTimeline,
    RoutedPartner,
    TimelineStep,
    TraceEvent,
    fold,
    summarize,
)

SERVICE_NAME = "referral-timeline"
CONSUMER_GROUP = "referral-timeline"
TOPIC_PATTERN = r"^(referrals\.lifecycle|referrals\.submitted|partner\..+\.status)$"
DEFAULT_PAGE_SIZE = 100
REBUILD_TIMEOUT_S = 1800.0

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes | None]]


# --- records -> trace events (the only place that reads event payloads) ----------------------


def _time(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """The short name of an enum value ("" for 0, the number for a value this build lacks)."""
    if not value:
        return ""
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


def _state(value: int) -> DeliveryState | None:
    name = _enum_name(lifecycle_pb2.DeliveryState, value, "DELIVERY_STATE_")
    try:
        return DeliveryState(name) if name else None
    except ValueError:
        return None


def _priority(value: int) -> str:
    return _enum_name(lifecycle_pb2.Priority, value, "PRIORITY_")


def _operational_text(event: Message, name: str) -> str:
    """A singular string field's value, only if the contract classes it as operational."""
    for field in event.DESCRIPTOR.fields:
        if field.name == name:
            if (
                field.type == FieldDescriptor.TYPE_STRING
                and not field.is_repeated
                and sensitivity_of(cast(FieldDescriptor, field)) == class_value("OPERATIONAL")
            ):
                return str(getattr(event, name))
            break
    return ""


def trace_event_of(
    topic: str, envelope: Envelope, event: Message, headers: Headers
) -> TraceEvent | None:
    """What the timeline keeps of one record, or None if it concerns no referral."""
    base: dict[str, Any] = {
        "event_id": envelope.event_id,
        "event_type": envelope.event_type,
        "occurred_at": envelope.time,
        "trace_id": trace_id_of_headers(headers),
    }
    fields: dict[str, Any]
    if isinstance(event, lifecycle_pb2.ReferralSubmitted):
        # Personal data lives here: only these three fields are ever read.
        received_at = _time(event.referral, "received_at")
        fields = {
            "referral_id": event.referral.referral_id,
            "source": event.referral.source,
            "received_at": received_at,
            "occurred_at": received_at or envelope.time,
        }
    elif isinstance(event, lifecycle_pb2.ReferralAmended):
        fields = {"referral_id": event.referral.referral_id, "source": event.referral.source}
    elif isinstance(event, lifecycle_pb2.ReferralWithdrawn):
        fields = {"referral_id": event.referral_id}
    elif isinstance(event, lifecycle_pb2.ReferralRouted):
        decision = event.decision
        fields = {
            "referral_id": event.referral_id,
            "source": event.source,
            "priority": _priority(decision.priority),
            "policy_version": decision.policy_version,
            "rule_ids": tuple(m.rule_id for m in decision.matched_rules),
            "partners": tuple(
                RoutedPartner(p.partner, _priority(p.priority), tuple(p.rule_ids), p.delivery_id)
                for p in decision.partners
            ),
            # The decision's own time: its records are stamped one by one while it is built.
            "occurred_at": _time(decision, "decided_at") or envelope.time,
        }
    elif isinstance(event, lifecycle_pb2.ReferralDelivered):
        fields = {
            "referral_id": event.referral_id,
            "delivery_id": event.delivery_id,
            "partner": event.partner,
            "priority": _priority(event.priority),
            "acknowledge_by": _time(event, "acknowledge_by"),
            "state": DeliveryState.DELIVERED,
        }
    elif isinstance(event, lifecycle_pb2.DeliveryStatusChanged):
        fields = {
            "referral_id": event.referral_id,
            "delivery_id": event.delivery_id,
            "partner": event.partner,
            "previous_state": _state(event.previous_state),
            "state": _state(event.state),
            "reason": _enum_name(
                lifecycle_pb2.DeclineReason, event.decline_reason, "DECLINE_REASON_"
            ),
            "outcome": _enum_name(lifecycle_pb2.Outcome, event.outcome, "OUTCOME_"),
        }
    elif isinstance(event, lifecycle_pb2.DeliveryStatusRejected):
        fields = {
            "referral_id": event.referral_id,
            "delivery_id": event.delivery_id,
            "partner": event.reporting_partner,
            "previous_state": _state(event.current_state),
            "state": _state(event.attempted_state),
            "reason": event.reason,
        }
    elif isinstance(event, lifecycle_pb2.DeliveryEscalated):
        fields = {
            "referral_id": event.referral_id,
            "delivery_id": event.delivery_id,
            "partner": event.partner,
            "acknowledge_by": _time(event, "deadline"),
            "state": DeliveryState.ESCALATED,
        }
    elif isinstance(event, lifecycle_pb2.DeliveryRerouteRequested):
        fields = {
            "referral_id": event.referral_id,
            "delivery_id": event.declined_delivery_id,
            "partner": event.declined_partner,
            "reason": _enum_name(lifecycle_pb2.DeclineReason, event.reason, "DECLINE_REASON_"),
        }
    elif isinstance(event, delivery_pb2.DeliveryStatusReported):
        # The topic, not the report, says which partner sent it; the note is never read.
        try:
            partner = topics.partner_of_status_topic(topic)
        except ValueError:
            partner = event.report.partner
        fields = {
            "referral_id": event.referral_id,
            "delivery_id": event.report.delivery_id,
            "partner": partner,
            "state": _state(event.report.state),
            "occurred_at": _time(event, "reported_at") or envelope.time,
        }
    elif isinstance(event, lifecycle_pb2.ConsentGranted | lifecycle_pb2.ConsentWithdrawn):
        scope = (
            event.consent.scope if isinstance(event, lifecycle_pb2.ConsentGranted) else event.scope
        )
        fields = {
            "referral_id": event.referral_id,
            "victim_ref": event.victim_ref,
            "reason": _enum_name(referral_pb2.ConsentScope, scope, "CONSENT_SCOPE_"),
        }
        if isinstance(event, lifecycle_pb2.ConsentWithdrawn):
            fields["occurred_at"] = _time(event, "withdrawn_at") or envelope.time
    else:
        fields = {
            name: _operational_text(event, name)
            for name in ("referral_id", "delivery_id", "partner")
        }
    merged = {**base, **fields}
    if not merged.get("referral_id"):
        return None
    return TraceEvent(**merged)


# --- trace events -> the query API's messages ------------------------------------------------


def _state_value(state: DeliveryState | None) -> lifecycle_pb2.DeliveryState.ValueType:
    if state is None:
        return lifecycle_pb2.DELIVERY_STATE_UNSPECIFIED
    return lifecycle_pb2.DeliveryState.Value(f"DELIVERY_STATE_{state.value}")


def _priority_value(name: str) -> lifecycle_pb2.Priority.ValueType:
    try:
        return lifecycle_pb2.Priority.Value(f"PRIORITY_{name}")
    except ValueError:
        return lifecycle_pb2.PRIORITY_UNSPECIFIED


def _delivery_message(delivery: DeliveryStatus) -> query_pb2.DeliverySummary:
    message = query_pb2.DeliverySummary(
        delivery_id=delivery.delivery_id,
        partner=delivery.partner,
        state=_state_value(delivery.state),
        overdue=delivery.overdue,
    )
    if delivery.acknowledge_by is not None:
        message.acknowledge_by.FromDatetime(delivery.acknowledge_by)
    return message


def summary_message(summary: ReferralSummary) -> query_pb2.ReferralSummary:
    message = query_pb2.ReferralSummary(
        referral_id=summary.referral_id,
        source=summary.source,
        priority=_priority_value(summary.priority),
        trace_id=summary.trace_id,
        deliveries=[_delivery_message(d) for d in summary.deliveries],
    )
    if summary.received_at is not None:
        message.received_at.FromDatetime(summary.received_at)
    return message


def step_message(step: TimelineStep) -> query_pb2.TimelineEntry:
    message = query_pb2.TimelineEntry(
        event_type=step.event_type,
        partner=step.partner,
        state=_state_value(step.state),
        detail=step.detail,
    )
    message.occurred_at.FromDatetime(step.occurred_at)
    return message


def timeline_message(timeline: ReferralTimeline) -> query_pb2.GetReferralResponse:
    return query_pb2.GetReferralResponse(
        summary=summary_message(timeline.summary),
        timeline=[step_message(step) for step in timeline.steps],
    )


class ReferralQueryApi(query_pb2_grpc.ReferralQueryServiceServicer):
    """ReferralQueryService over the trace store; overdue is judged at the time of the call."""

    def __init__(
        self, store: TraceStore, *, clock: Callable[[], datetime] = service_clock.now
    ) -> None:
        self._store = store
        self._clock = clock

    def GetReferral(
        self, request: query_pb2.GetReferralRequest, context: grpc.ServicerContext
    ) -> query_pb2.GetReferralResponse:
        violations = violations_of(request)
        if violations:
            abort_invalid(context, violations)
        events = self._store.events_of(request.referral_id)
        if not events:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"no referral {request.referral_id} in the trace store"
            )
        return timeline_message(fold(request.referral_id, events, now=self._clock()))

    def ListReferrals(
        self, request: query_pb2.ListReferralsRequest, context: grpc.ServicerContext
    ) -> query_pb2.ListReferralsResponse:
        violations = violations_of(request)
        if violations:
            abort_invalid(context, violations)
        now = self._clock()
        ids = self._store.referral_ids(
            partner=request.partner or None,
            state=_state(request.state),
            overdue_at=now if request.overdue_only else None,
            limit=request.page_size or DEFAULT_PAGE_SIZE,
        )
        events = self._store.events_of_many(ids)
        return query_pb2.ListReferralsResponse(
            referrals=[
                summary_message(summarize(referral_id, events.get(referral_id, []), now=now))
                for referral_id in ids
            ]
        )


# --- consuming -------------------------------------------------------------------------------


class StoreWriteFailed(RuntimeError):
    """A record could not be stored; the service stops so the record is read again."""


class ObservingConsumer(EventConsumer):
    """The shared consume loop, for a service that only observes the topics it reads.

    Undecodable records are skipped (their owners dead-letter them); a record the handler keeps
    failing on stops the loop before its offset is committed, instead of being dead-lettered.
    """

    def _dead_letter(self, record: Any, error: str, *, attempts: int) -> None:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        if error.startswith("undecodable record"):
            log.info("skipped %s: %s (dead-lettered by its own consumers)", where, error)
            return
        raise StoreWriteFailed(f"cannot store {where} after {attempts} attempts: {error}")


class BatchWriter:
    """The handler collects what the timeline needs of each consumed record; the batch is
    stored in one transaction before its offsets are committed."""

    def __init__(self, store: TraceStore) -> None:
        self._store = store
        self._pending: list[TraceEvent] = []

    def collect(self, consumed: ConsumedEvent) -> None:
        event = trace_event_of(consumed.topic, consumed.envelope, consumed.event, consumed.headers)
        if event is not None:
            self._pending.append(event)

    def write(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._store.append_many(pending)


def rebuild(
    store: TraceStore, bootstrap_servers: str, *, timeout: float = REBUILD_TIMEOUT_S
) -> int:
    """Drop the store and replay the topics from the beginning to their current end; returns
    the number of records read. See the module docstring for why no consumer group is used."""
    store.reset()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{SERVICE_NAME}-rebuild",
        **consumer_settings(),
    )
    pattern = re.compile(TOPIC_PATTERN)
    read = 0
    try:
        names = sorted(name for name in consumer.topics() if pattern.match(name))
        partitions = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        ends: dict[TopicPartition, int] = consumer.end_offsets(partitions)
        log.info("replaying %d topics (%d partitions) from the beginning", len(names), len(ends))
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replay did not reach the end in {timeout:.0f}s")
            batch: list[TraceEvent] = []
            for partition, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset >= ends[partition]:
                        continue
                    read += 1
                    try:
                        envelope, event = decode_event(record.headers, record.value)
                    except EnvelopeError:
                        continue
                    trace_event = trace_event_of(record.topic, envelope, event, record.headers)
                    if trace_event is not None:
                        batch.append(trace_event)
            if batch:
                store.append_many(batch)
    finally:
        consumer.close()
    return read


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m referral timeline",
        description="Keep every referral's timeline and serve ReferralQueryService.",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="drop the trace store, replay the topics from the beginning, then exit",
    )
    args = parser.parse_args(list(argv))
    configure_logging(SERVICE_NAME)
    bootstrap = config.kafka_bootstrap_servers()
    store = open_trace_store(config.trace_store_url(), config.data_dir())
    if args.rebuild:
        try:
            read = rebuild(store, bootstrap)
            events, referrals = store.counts()
        finally:
            store.close()
        print(
            f"rebuilt the trace store ({store.description}) from {read} records: "
            f"{events} events of {referrals} referrals"
        )
        return 0

    provider = configure_tracing(SERVICE_NAME)
    stop = stop_on_signals()
    publisher = EventPublisher(bootstrap, source=SERVICE_NAME)

    def register(server: grpc.Server) -> list[str]:
        query_pb2_grpc.add_ReferralQueryServiceServicer_to_server(ReferralQueryApi(store), server)
        return [query_pb2.DESCRIPTOR.services_by_name["ReferralQueryService"].full_name]

    server = start_grpc_server(
        config.query_grpc_address(), register, interceptors=[TracingInterceptor()]
    )
    consumer = ObservingConsumer(
        bootstrap, group_id=CONSUMER_GROUP, topic_pattern=TOPIC_PATTERN, publisher=publisher
    )
    log.info("trace store %s; query API on %s", store.description, config.query_grpc_address())
    try:
        writer = BatchWriter(store)
        consumer.run(writer.collect, stop, after_batch=writer.write)
    finally:
        server.stop()
        publisher.close()
        store.close()
        shutdown_tracing(provider)
    return 0
