"""The router's service layer: turn one submitted-topic record into the records to publish.

Independent of faust so it can be tested and benchmarked alone. Every output id is derived from
its input (referral, partner, revision), so replaying a record after a crash produces the same
delivery ids and partners recognise the copy they already have.

Besides submissions, the submitted topic carries everything that changes a referral later, all
keyed by the referral id and so in order on one partition: amendments and withdrawals (from the
intake), consent granted or withdrawn (from victim services) and re-route requests (from the
lifecycle tracker, when a partner declined). What to do with them is decided by the pure
functions of ``referral.domain.followups`` over the router's memory of the referral
(``ReferralStates``); each event is its own revision, so its deliveries have stable ids too:

=====================  ==========================  =========================================
event                  revision                    deliveries
=====================  ==========================  =========================================
ReferralSubmitted      ``original``                NEW to every chosen partner
ReferralAmended        the event id                AMENDMENT / NEW / WITHDRAWAL (see followups)
ReferralWithdrawn      ``withdrawn``               WITHDRAWAL to every partner that received it
ConsentGranted         ``consent:<event id>``      NEW to partners chosen only now
ConsentWithdrawn       ``consent:<event id>``      RECALL where the identity rested on it
DeliveryRerouteReq.    ``reroute:<declined id>``   NEW to the next candidate (the CCHT desk)
=====================  ==========================  =========================================
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from opentelemetry import trace

from ctroute.options.v1 import sensitivity_pb2
from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2, referral_pb2
from plumbing import clock as service_clock
from plumbing import topics
from plumbing.envelope import EnvelopeError, decode_event
from plumbing.kafka import dead_letter_headers
from referral.adapters.decision import decision_to_proto, delivery_message, priority_value
from referral.adapters.facts import facts_from_referral, identifiers_of
from referral.adapters.outbound import OutboundRecord, outbound
from referral.adapters.referral_state import (
    consent_granted,
    consent_withdrawn,
    effective_referral,
)
from referral.domain.correlation import corroboration_for, fingerprints
from referral.domain.deadlines import AcknowledgementDeadlines
from referral.domain.followups import (
    REROUTE_RULE_ID,
    ConsentChange,
    Holding,
    Notice,
    NoticeKind,
    ReferralState,
    plan_amendment,
    plan_new_recipients,
    plan_recalls,
    plan_reroute,
    plan_submission,
    plan_withdrawal,
)
from referral.domain.policy import Policy
from referral.domain.routing import (
    RoutingDecision,
    RuleMatch,
    release_to,
    route_referral,
)

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


class ReferralStates(Protocol):
    """What the router remembers of each referral between events, kept durably.

    The faust adapter keeps it in a changelog-backed table partitioned like the submitted topic
    (every event of a referral is on the referral's partition), so the memory of a referral is
    always on the instance that handles its events.
    """

    def get(self, referral_id: str) -> ReferralState | None: ...


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
    acknowledged) what the correlation index learns, the referral's new state and the revision to
    remember as routed, in that order: a crash in between replays the record, and a replay of a
    remembered revision is skipped."""

    records: list[OutboundRecord]
    routed: tuple[str, str] | None = None
    correlated: Correlated | None = None
    state: tuple[str, ReferralState] | None = None


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


class NoStates:
    """ReferralStates for a router without memory (tools and tests): every referral is new."""

    def get(self, referral_id: str) -> ReferralState | None:
        return None


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
        states: ReferralStates | None = None,
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
                states or NoStates(),
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
        states: ReferralStates,
    ) -> RouterOutput:
        referral_id, revision = _revision_of(event, event_id)
        if referral_id is None:
            raise UnexpectedEvent(event_type)
        if routed.seen(referral_id, revision):
            # A redelivery after a crash or rebalance: the partners already have it.
            log.info("%s revision %s already routed; skipped", referral_id, revision)
            return RouterOutput([])
        state = states.get(referral_id)
        if isinstance(event, lifecycle_pb2.ReferralSubmitted):
            return self._submitted(event.referral, revision, index)
        if isinstance(event, lifecycle_pb2.ReferralAmended):
            return self._amended(event.referral, revision, state, index)
        if state is None:
            # Consent, re-route and withdrawal events act on what partners hold; without a
            # record of the referral (routed before the router kept one) there is nothing to act
            # on, and guessing recipients could release data to a partner that never had it.
            log.warning(
                "%s for %s: the router has no record of the referral; nothing done",
                type(event).__name__,
                referral_id,
            )
            return RouterOutput([])
        if isinstance(event, lifecycle_pb2.ReferralWithdrawn):
            return self._withdrawn(referral_id, revision, state, index)
        if isinstance(event, lifecycle_pb2.ConsentGranted):
            return self._consent_granted(event, revision, state, index)
        if isinstance(event, lifecycle_pb2.ConsentWithdrawn):
            return self._consent_withdrawn(event, revision, state, index)
        assert isinstance(event, lifecycle_pb2.DeliveryRerouteRequested)
        return self._reroute(event, revision, state, index)

    # --- one handler per event --------------------------------------------------------------

    def _submitted(
        self, referral: referral_pb2.Referral, revision: str, index: CorrelationIndex
    ) -> RouterOutput:
        now = self.clock()
        decision = self._decide(referral, now)
        plan = plan_submission(decision)
        records, own = self._deliver(referral, revision, plan.notices, decision, index, now)
        self._log_routed(referral.referral_id, decision)
        return self._output(
            referral.referral_id,
            revision,
            records,
            ReferralState(referral.SerializeToString(), plan.holdings),
            index,
            own,
        )

    def _amended(
        self,
        referral: referral_pb2.Referral,
        revision: str,
        state: ReferralState | None,
        index: CorrelationIndex,
    ) -> RouterOutput:
        referral_id = referral.referral_id
        now = self.clock()
        if state is None:
            # Routed before the router kept a record (or the record was lost): who holds what is
            # unknown, so every partner chosen now gets the amendment, as before records existed.
            decision = self._decide(referral, now)
            notices = [
                Notice(r.partner, NoticeKind.AMENDMENT, r.priority, r) for r in decision.partners
            ]
            records, own = self._deliver(referral, revision, notices, decision, index, now)
            self._log_routed(referral_id, decision)
            fresh = ReferralState(referral.SerializeToString(), plan_submission(decision).holdings)
            return self._output(referral_id, revision, records, fresh, index, own)
        if state.withdrawn:
            # The source withdrew the referral and every partner was told; a later amendment does
            # not bring it back (the source submits a new referral for that).
            log.warning("%s was withdrawn; amendment %s not routed", referral_id, revision)
            return RouterOutput([], (referral_id, revision))
        updated = replace(state, content=referral.SerializeToString())
        effective = effective_referral(updated)
        facts = facts_from_referral(effective)
        decision = route_referral(facts, self.policy, now)
        chosen = set(decision.recipients)
        substitutes = {
            h.partner: release_to(
                facts, self.policy, h.partner, now, priority=h.priority, rule_ids=h.rule_ids
            )
            for h in state.holdings
            if h.substitute and not h.declined and h.partner not in chosen
        }
        plan = plan_amendment(state.holdings, decision, substitutes)
        if substitutes:
            kept = RuleMatch(
                REROUTE_RULE_ID, "a partner that took over the referral after a decline keeps it"
            )
            decision = replace(decision, matched_rules=(*decision.matched_rules, kept))
        records, own = self._deliver(effective, revision, plan.notices, decision, index, now)
        log.info(
            "amended %s: %s",
            referral_id,
            ", ".join(f"{n.partner} {n.kind}" for n in plan.notices) or "nobody to tell",
        )
        return self._output(
            referral_id, revision, records, replace(updated, holdings=plan.holdings), index, own
        )

    def _withdrawn(
        self, referral_id: str, revision: str, state: ReferralState, index: CorrelationIndex
    ) -> RouterOutput:
        if state.withdrawn:
            return RouterOutput([], (referral_id, revision))
        plan = plan_withdrawal(state.holdings)
        records, _ = self._deliver(
            effective_referral(state), revision, plan.notices, None, index, self.clock()
        )
        log.info(
            "withdrawal of %s sent to %s", referral_id, ",".join(n.partner for n in plan.notices)
        )
        return RouterOutput(
            records, (referral_id, revision), None, (referral_id, replace(state, withdrawn=True))
        )

    def _consent_granted(
        self,
        event: lifecycle_pb2.ConsentGranted,
        revision: str,
        state: ReferralState,
        index: CorrelationIndex,
    ) -> RouterOutput:
        updated = self._with_change(state, consent_granted(event))
        if state.withdrawn:
            # Recorded, so the memory stays complete, but a withdrawn referral goes to nobody new.
            log.info("%s is withdrawn; consent recorded, not routed", event.referral_id)
            return RouterOutput(
                [], (event.referral_id, revision), None, (event.referral_id, updated)
            )
        now = self.clock()
        effective = effective_referral(updated)
        decision = self._decide(effective, now)
        plan = plan_new_recipients(state.holdings, decision)
        records, own = self._deliver(effective, revision, plan.notices, decision, index, now)
        log.info(
            "consent for %s of %s recorded; new recipients: %s",
            event.victim_ref,
            event.referral_id,
            ",".join(n.partner for n in plan.notices) or "none",
        )
        return self._output(
            event.referral_id,
            revision,
            records,
            replace(updated, holdings=plan.holdings),
            index,
            own if plan.notices else None,
        )

    def _consent_withdrawn(
        self,
        event: lifecycle_pb2.ConsentWithdrawn,
        revision: str,
        state: ReferralState,
        index: CorrelationIndex,
    ) -> RouterOutput:
        # Applied even to a withdrawn referral: its partners may still hold the identity.
        now = self.clock()
        change = consent_withdrawn(event, now)
        updated = self._with_change(state, change)
        effective = effective_referral(updated)
        facts = facts_from_referral(effective)
        releases_after = {
            h.partner: release_to(
                facts, self.policy, h.partner, now, priority=h.priority, rule_ids=h.rule_ids
            )
            for h in state.holdings
            if h.partner in self.policy.release_profiles
        }
        plan = plan_recalls(
            state.holdings, change.victim_ref, change.scope, self.policy, releases_after
        )
        records, _ = self._deliver(effective, revision, plan.notices, None, index, now)
        log.info(
            "consent %s of %s on %s withdrawn; recalled from %s",
            change.scope,
            change.victim_ref,
            event.referral_id,
            ",".join(n.partner for n in plan.notices) or "nobody",
        )
        return RouterOutput(
            records,
            (event.referral_id, revision),
            None,
            (event.referral_id, replace(updated, holdings=plan.holdings)),
        )

    def _reroute(
        self,
        event: lifecycle_pb2.DeliveryRerouteRequested,
        revision: str,
        state: ReferralState,
        index: CorrelationIndex,
    ) -> RouterOutput:
        referral_id = event.referral_id
        if state.withdrawn:
            log.info(
                "%s is withdrawn; decline by %s not re-routed", referral_id, event.declined_partner
            )
            return RouterOutput([], (referral_id, revision))
        reason = lifecycle_pb2.DeclineReason.Name(event.reason).removeprefix("DECLINE_REASON_")
        outcome = plan_reroute(state.holdings, event.declined_partner, reason)
        updated = replace(state, holdings=outcome.plan.holdings)
        target, priority = outcome.target, outcome.priority
        if target is None or priority is None:
            log.info("%s: %s", referral_id, outcome.explanation)
            return RouterOutput([], (referral_id, revision), None, (referral_id, updated))
        if target not in self.policy.release_profiles:
            log.error(
                "%s: cannot re-route to %s, which the policy does not know", referral_id, target
            )
            return RouterOutput([], (referral_id, revision), None, (referral_id, updated))
        now = self.clock()
        effective = effective_referral(updated)
        # The desk receives what its own release profile allows, as if a rule had chosen it.
        release = release_to(
            facts_from_referral(effective),
            self.policy,
            target,
            now,
            priority=priority,
            rule_ids=(REROUTE_RULE_ID,),
        )
        decision = RoutingDecision(
            self.policy.version,
            priority,
            (RuleMatch(REROUTE_RULE_ID, outcome.explanation),),
            (release,),
        )
        notices = (Notice(target, NoticeKind.NEW, priority, release),)
        holdings = tuple(
            sorted((*updated.holdings, Holding.of(release, substitute=True)), key=_partner)
        )
        records, own = self._deliver(effective, revision, notices, decision, index, now)
        log.info("%s re-routed: %s", referral_id, outcome.explanation)
        return self._output(
            referral_id, revision, records, replace(updated, holdings=holdings), index, own
        )

    # --- shared steps -----------------------------------------------------------------------

    def route(
        self,
        referral: referral_pb2.Referral,
        revision: str,
        kind: delivery_pb2.DeliveryKind.ValueType,
        index: CorrelationIndex | None = None,
    ) -> tuple[list[OutboundRecord], Correlated]:
        """Decide, redact per partner, and build the deliveries and lifecycle events: every
        partner chosen gets a delivery of ``kind``. What a router without memory does (tools,
        benchmarks); the event handlers above plan against what partners already hold."""
        now = self.clock()
        decision = self._decide(referral, now)
        notice_kind = NoticeKind(
            delivery_pb2.DeliveryKind.Name(kind).removeprefix("DELIVERY_KIND_")
        )
        notices = [Notice(r.partner, notice_kind, r.priority, r) for r in decision.partners]
        records, own = self._deliver(
            referral, revision, notices, decision, index or EmptyIndex(), now
        )
        self._log_routed(referral.referral_id, decision)
        return records, Correlated(referral.referral_id, own, frozenset(decision.recipients))

    def _decide(self, referral: referral_pb2.Referral, now: datetime) -> RoutingDecision:
        return route_referral(facts_from_referral(referral), self.policy, now)

    @staticmethod
    def _with_change(state: ReferralState, change: ConsentChange) -> ReferralState:
        return replace(state, consent_changes=(*state.consent_changes, change))

    @staticmethod
    def _output(
        referral_id: str,
        revision: str,
        records: list[OutboundRecord],
        state: ReferralState,
        index: CorrelationIndex,
        own_fingerprints: frozenset[str] | None,
    ) -> RouterOutput:
        """The output of an event that changed who holds the referral. The correlation index
        learns every partner that ever received it: a partner later told the referral was
        withdrawn for it still knows the id."""
        correlated = None
        if own_fingerprints is not None:
            recipients = frozenset(h.partner for h in state.holdings)
            correlated = Correlated(
                referral_id, own_fingerprints, recipients | index.recipients_of(referral_id)
            )
        return RouterOutput(records, (referral_id, revision), correlated, (referral_id, state))

    def _deliver(
        self,
        referral: referral_pb2.Referral,
        revision: str,
        notices: Sequence[Notice],
        decision: RoutingDecision | None,
        index: CorrelationIndex,
        now: datetime,
    ) -> tuple[list[OutboundRecord], frozenset[str]]:
        """The inbox records of ``notices`` with their ReferralDelivered events, and a
        ReferralRouted recording ``decision`` for the copies that release content.

        ``referral`` is the effective content. Returns the records and the referral's own
        fingerprints, for the correlation index.
        """
        referral_id = referral.referral_id
        own_fingerprints = fingerprints(identifiers_of(referral), self.correlation_key)
        releases = [n.release for n in notices if n.release is not None]
        corroborating: set[str] = set()
        if releases:
            corroborating = index.referrals_sharing(own_fingerprints) - {referral_id}
        recipients_of = {other: index.recipients_of(other) for other in corroborating}
        policy_version = decision.policy_version if decision else self.policy.version
        span = trace.get_current_span()
        span.set_attribute("ctroute.referral_id", referral_id)
        span.set_attribute("ctroute.policy_version", policy_version)
        span.set_attribute("ctroute.partners", [n.partner for n in notices])
        delivery_ids = {
            n.partner: stable_id("dlv", referral_id, n.partner, revision) for n in notices
        }
        records: list[OutboundRecord] = []
        lifecycle: list[OutboundRecord] = []
        for notice in notices:
            delivery_id = delivery_ids[notice.partner]
            due = self.deadlines.due(notice.priority.name, now)
            kind = delivery_pb2.DeliveryKind.Value(f"DELIVERY_KIND_{notice.kind.value}")
            if notice.release is not None:
                delivery = delivery_message(
                    delivery_id=delivery_id,
                    release=notice.release,
                    referral=referral,
                    policy_version=policy_version,
                    delivered_at=now,
                    acknowledge_by=due,
                    kind=kind,
                    corroboration=corroboration_for(notice.partner, corroborating, recipients_of),
                )
            else:
                delivery = _ids_only_delivery(
                    delivery_id, notice, referral_id, policy_version, kind, now, due
                )
            records.append(
                outbound(
                    topics.inbox(notice.partner),
                    referral_id,
                    delivery,
                    source=SOURCE,
                    event_id=delivery_id,
                )
            )
            # Every delivery, notices included, is tracked in the closed loop: a partner
            # acknowledges a withdrawal or a recall like any other copy.
            delivered = lifecycle_pb2.ReferralDelivered(
                referral_id=referral_id,
                delivery_id=delivery_id,
                partner=notice.partner,
                priority=priority_value(notice.priority.name),
                withdraws_referral=notice.kind is NoticeKind.WITHDRAWAL,
            )
            delivered.acknowledge_by.FromDatetime(due)
            lifecycle.append(
                outbound(
                    topics.LIFECYCLE,
                    referral_id,
                    delivered,
                    source=SOURCE,
                    event_id=stable_id("evt", delivery_id, "delivered"),
                )
            )
        if decision is not None and releases:
            # The auditor's record of this revision's releases: the rules that matched, and the
            # partners that received content in it (a notice releases nothing).
            recorded = replace(decision, partners=tuple(releases))
            routed = lifecycle_pb2.ReferralRouted(
                referral_id=referral_id,
                source=referral.source,
                decision=decision_to_proto(recorded, delivery_ids, now),
            )
            records.append(
                outbound(
                    topics.LIFECYCLE,
                    referral_id,
                    routed,
                    source=SOURCE,
                    event_id=stable_id("evt", referral_id, revision, "routed"),
                )
            )
        return records + lifecycle, own_fingerprints

    @staticmethod
    def _log_routed(referral_id: str, decision: RoutingDecision) -> None:
        log.info(
            "routed %s to %s (priority %s, rules %s, policy %s)",
            referral_id,
            ",".join(p.partner for p in decision.partners),
            decision.priority.name,
            ",".join(m.rule_id for m in decision.matched_rules),
            decision.policy_version,
        )

    def _dead_letter(self, record: RawRecord, error: str) -> OutboundRecord:
        log.warning(
            "dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, error
        )
        return OutboundRecord(
            topics.DEAD_LETTER,
            record.key,
            record.value,
            dead_letter_headers(record, error=error, group_id=self.group_id, attempts=1),
        )


def _partner(holding: Holding) -> str:
    return holding.partner


def _revision_of(event: object, event_id: str) -> tuple[str | None, str]:
    """The referral an event concerns and the revision its deliveries are made under."""
    if isinstance(event, lifecycle_pb2.ReferralSubmitted):
        # A resubmission of the same referral (an intake retry) is the same revision.
        return event.referral.referral_id, "original"
    if isinstance(event, lifecycle_pb2.ReferralAmended):
        return event.referral.referral_id, event_id
    if isinstance(event, lifecycle_pb2.ReferralWithdrawn):
        return event.referral_id, "withdrawn"
    if isinstance(event, lifecycle_pb2.ConsentGranted | lifecycle_pb2.ConsentWithdrawn):
        return event.referral_id, f"consent:{event_id}"
    if isinstance(event, lifecycle_pb2.DeliveryRerouteRequested):
        # One re-route per declined delivery, whoever publishes the request how often.
        return event.referral_id, f"reroute:{event.declined_delivery_id}"
    return None, ""


def _ids_only_delivery(
    delivery_id: str,
    notice: Notice,
    referral_id: str,
    policy_version: str,
    kind: delivery_pb2.DeliveryKind.ValueType,
    delivered_at: datetime,
    acknowledge_by: datetime,
) -> delivery_pb2.PartnerDelivery:
    """A WITHDRAWAL or RECALL: ids only. The partner already holds the content; a notice must
    never become another release of it (a recall names the victim by reference, not identity)."""
    delivery = delivery_pb2.PartnerDelivery(
        delivery_id=delivery_id,
        partner=notice.partner,
        priority=priority_value(notice.priority.name),
        released_classes=[sensitivity_pb2.SENSITIVITY_OPERATIONAL],
        policy_version=policy_version,
        kind=kind,
        recalled_victim_ref=notice.recalled_victim_ref or "",
    )
    delivery.referral.referral_id = referral_id
    delivery.delivered_at.FromDatetime(delivered_at)
    delivery.acknowledge_by.FromDatetime(acknowledge_by)
    return delivery
