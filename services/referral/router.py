"""The router's service layer: turn one submitted-topic record into the records to publish.

Independent of faust so it can be tested and benchmarked alone. Every output id is derived from
its input (referral, partner, revision), so replaying a record after a crash produces the same
delivery ids and partners recognise the copy they already have.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from opentelemetry import trace

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2, referral_pb2
from plumbing import clock as service_clock
from plumbing import topics
from plumbing.envelope import EnvelopeError, decode_event
from plumbing.kafka import dead_letter_headers
from referral.adapters.decision import decision_to_proto, delivery_message, priority_value
from referral.adapters.facts import facts_from_referral, identifiers_of
from referral.adapters.outbound import OutboundRecord, outbound
from referral.domain.correlation import corroboration_for, fingerprints
from referral.domain.deadlines import AcknowledgementDeadlines
from referral.domain.policy import Policy
from referral.domain.routing import route_referral

log = logging.getLogger(__name__)
SOURCE = "referral/router"
_IDS = uuid.UUID("0f7c2a9e-52d4-4a59-8a3f-61d1c3b0e8b4")

Clock = Callable[[], datetime]


def _where(error: BaseException) -> str:
    """file:line where an exception was raised: enough to debug, without its message."""
    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


class RoutedRevisions(Protocol):
    """Which revisions of which referrals were already routed, kept durably.

    The faust adapter keeps it in a changelog-backed table partitioned like the submitted topic,
    so it moves with its partitions on a rebalance and survives a crash.
    """

    def seen(self, referral_id: str, revision: str) -> bool: ...


class CorrelationIndex(Protocol):
    """Fingerprints of strong identifiers -> referral ids, and referral id -> its recipients."""

    def referrals_sharing(self, fingerprints: frozenset[str]) -> set[str]: ...

    def recipients_of(self, referral_id: str) -> frozenset[str]: ...


@dataclass(frozen=True)
class Correlated:
    """What the index must learn once a referral's deliveries are safely published."""

    referral_id: str
    fingerprints: frozenset[str]
    recipients: frozenset[str]


@dataclass(frozen=True)
class RouterOutput:
    """What one consumed record leads to: the records to publish, then (once they are all
    acknowledged) the revision to remember as routed and what the correlation index learns."""

    records: list[OutboundRecord]
    routed: tuple[str, str] | None = None
    correlated: Correlated | None = None


class EmptyIndex:
    """CorrelationIndex for a router without memory (tools and tests)."""

    def referrals_sharing(self, fingerprints: frozenset[str]) -> set[str]:
        return set()

    def recipients_of(self, referral_id: str) -> frozenset[str]:
        return frozenset()


class NothingRoutedYet:
    """RoutedRevisions for a router without memory (tools and tests)."""

    def seen(self, referral_id: str, revision: str) -> bool:
        return False


class UnexpectedEvent(Exception):
    """An event type the submitted topic should never carry."""


def stable_id(prefix: str, *parts: str) -> str:
    """An id derived from its parts: the same input always yields the same id."""
    return f"{prefix}-" + uuid.uuid5(_IDS, "\x1f".join(parts)).hex[:20]


class RawRecord:
    """What the router needs of a consumed record, whatever client consumed it."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = list(headers)


class ReferralRouter:
    """Routes submitted referrals under a policy; pure apart from the clock."""

    def __init__(
        self,
        policy: Policy,
        *,
        deadlines: AcknowledgementDeadlines | None = None,
        clock: Clock = service_clock.now,
        group_id: str = "referral-router",
        correlation_key: bytes = b"",
    ) -> None:
        self.policy = policy
        self.correlation_key = correlation_key
        self.deadlines = deadlines or AcknowledgementDeadlines()
        self.clock = clock
        self.group_id = group_id

    def handle(
        self,
        record: RawRecord,
        routed: RoutedRevisions | None = None,
        index: CorrelationIndex | None = None,
    ) -> RouterOutput:
        """The records to publish for one consumed record (dead letter included)."""
        try:
            envelope, event = decode_event(record.headers, record.value)
        except EnvelopeError as error:
            return RouterOutput([self._dead_letter(record, f"undecodable record: {error}")])
        try:
            return self._dispatch(
                envelope.event_type,
                envelope.event_id,
                event,
                routed or NothingRoutedYet(),
                index or EmptyIndex(),
            )
        except Exception as error:
            # A record the router cannot route must not stop the pipeline; it is parked with its
            # origin for an operator. Only the exception type is recorded: messages can quote data.
            log.error(
                "routing failed for %s[%d]@%d: %s at %s",
                record.topic,
                record.partition,
                record.offset,
                type(error).__name__,
                _where(error),
            )
            return RouterOutput(
                [self._dead_letter(record, f"routing failed: {type(error).__name__}")]
            )

    def _dispatch(
        self,
        event_type: str,
        event_id: str,
        event: object,
        routed: RoutedRevisions,
        index: CorrelationIndex,
    ) -> RouterOutput:
        revision = ""
        referral: referral_pb2.Referral | None = None
        kind = delivery_pb2.DELIVERY_KIND_NEW
        if isinstance(event, lifecycle_pb2.ReferralSubmitted):
            # A resubmission of the same referral (an intake retry) is the same revision.
            referral, revision = event.referral, "original"
        elif isinstance(event, lifecycle_pb2.ReferralAmended):
            referral, revision, kind = (
                event.referral,
                event_id,
                delivery_pb2.DELIVERY_KIND_AMENDMENT,
            )
        if referral is not None:
            if routed.seen(referral.referral_id, revision):
                # A redelivery after a crash or rebalance: the partners already have it.
                log.info("%s revision %s already routed; skipped", referral.referral_id, revision)
                return RouterOutput([])
            records, correlated = self.route(referral, revision, kind, index)
            return RouterOutput(records, (referral.referral_id, revision), correlated)
        return RouterOutput(self._dispatch_other(event_type, event))

    def _dispatch_other(self, event_type: str, event: object) -> list[OutboundRecord]:
        if isinstance(event, lifecycle_pb2.ReferralWithdrawn):
            # Notifying recipients of a withdrawal needs the record of who received what, which
            # the closed-loop tracker owns; the router only routes content.
            log.info("withdrawal of %s left to the lifecycle tracker", event.referral_id)
            return []
        raise UnexpectedEvent(event_type)

    def route(
        self,
        referral: referral_pb2.Referral,
        revision: str,
        kind: delivery_pb2.DeliveryKind.ValueType,
        index: CorrelationIndex | None = None,
    ) -> tuple[list[OutboundRecord], Correlated]:
        """Decide, redact per partner, and build the deliveries and lifecycle events."""
        now = self.clock()
        facts = facts_from_referral(referral)
        decision = route_referral(facts, self.policy, now)
        own_fingerprints = fingerprints(identifiers_of(referral), self.correlation_key)
        index = index or EmptyIndex()
        corroborating = index.referrals_sharing(own_fingerprints) - {referral.referral_id}
        recipients_of = {other: index.recipients_of(other) for other in corroborating}
        span = trace.get_current_span()
        span.set_attribute("ctroute.referral_id", referral.referral_id)
        span.set_attribute("ctroute.policy_version", decision.policy_version)
        span.set_attribute("ctroute.partners", [p.partner for p in decision.partners])
        delivery_ids = {
            release.partner: stable_id("dlv", referral.referral_id, release.partner, revision)
            for release in decision.partners
        }
        records: list[OutboundRecord] = []
        lifecycle: list[OutboundRecord] = []
        for release in decision.partners:
            delivery_id = delivery_ids[release.partner]
            due = self.deadlines.due(release.priority.name, now)
            delivery = delivery_message(
                delivery_id=delivery_id,
                release=release,
                referral=referral,
                policy_version=decision.policy_version,
                delivered_at=now,
                acknowledge_by=due,
                kind=kind,
                corroboration=corroboration_for(release.partner, corroborating, recipients_of),
            )
            records.append(
                outbound(
                    topics.inbox(release.partner),
                    referral.referral_id,
                    delivery,
                    source=SOURCE,
                    event_id=delivery_id,
                )
            )
            delivered = lifecycle_pb2.ReferralDelivered(
                referral_id=referral.referral_id,
                delivery_id=delivery_id,
                partner=release.partner,
                priority=priority_value(release.priority.name),
            )
            delivered.acknowledge_by.FromDatetime(due)
            lifecycle.append(
                outbound(
                    topics.LIFECYCLE,
                    referral.referral_id,
                    delivered,
                    source=SOURCE,
                    event_id=stable_id("evt", delivery_id, "delivered"),
                )
            )
        routed = lifecycle_pb2.ReferralRouted(
            referral_id=referral.referral_id,
            source=referral.source,
            decision=decision_to_proto(decision, delivery_ids, now),
        )
        records.append(
            outbound(
                topics.LIFECYCLE,
                referral.referral_id,
                routed,
                source=SOURCE,
                event_id=stable_id("evt", referral.referral_id, revision, "routed"),
            )
        )
        log.info(
            "routed %s to %s (priority %s, rules %s, policy %s)",
            referral.referral_id,
            ",".join(p.partner for p in decision.partners),
            decision.priority.name,
            ",".join(m.rule_id for m in decision.matched_rules),
            decision.policy_version,
        )
        correlated = Correlated(
            referral.referral_id,
            own_fingerprints,
            frozenset(p.partner for p in decision.partners),
        )
        return records + lifecycle, correlated

    def _dead_letter(self, record: RawRecord, error: str) -> OutboundRecord:
        log.warning(
            "dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, error
        )
        return OutboundRecord(
            topics.DEAD_LETTER,
            (record.key or b"").decode("utf-8", errors="replace"),
            record.value or b"",
            dead_letter_headers(record, error=error, group_id=self.group_id, attempts=1),
        )
