"""A referral's timeline, folded from its events: what an operator reads with `refctl trace`.

Operators ask two questions about a referral: where does it stand now (each partner's copy, its
state, whether its acknowledgement is overdue), and how did it get there (each hop, and how long
each took). Both are answered from the same events the services publish, so the answer can be
rebuilt at any time by replaying the topics.

This module is pure: no Kafka, gRPC, SQL or protobuf. The entry point translates each record into
a `TraceEvent` that holds operational fields only (ids, partners, states, times, rule ids, the
policy version), so nothing folded here, stored, or shown can carry personal data.

Latency per hop is the time since the step a hop follows in its own chain: routed follows
submitted (or the amendment or re-route that caused it), a partner's delivery follows the routing,
and each state a partner's copy reaches follows the previous one (delivered -> acknowledged ->
accepted ...). A partner's report and a refused report are measured from the copy's last state
without becoming a hop themselves, so delivered -> acknowledged stays one hop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from referral.domain.lifecycle import DeliveryState


class EventType(StrEnum):
    """The CloudEvents types the timeline understands (the contract messages' full names)."""

    SUBMITTED = "ctroute.referral.v1.ReferralSubmitted"
    AMENDED = "ctroute.referral.v1.ReferralAmended"
    WITHDRAWN = "ctroute.referral.v1.ReferralWithdrawn"
    ROUTED = "ctroute.referral.v1.ReferralRouted"
    DELIVERED = "ctroute.referral.v1.ReferralDelivered"
    STATUS_REPORTED = "ctroute.partner.v1.DeliveryStatusReported"
    STATUS_CHANGED = "ctroute.referral.v1.DeliveryStatusChanged"
    STATUS_REJECTED = "ctroute.referral.v1.DeliveryStatusRejected"
    ESCALATED = "ctroute.referral.v1.DeliveryEscalated"
    REROUTE_REQUESTED = "ctroute.referral.v1.DeliveryRerouteRequested"
    CONSENT_GRANTED = "ctroute.referral.v1.ConsentGranted"
    CONSENT_WITHDRAWN = "ctroute.referral.v1.ConsentWithdrawn"


UNACKNOWLEDGED_STATES = frozenset({DeliveryState.DELIVERED, DeliveryState.ESCALATED})
"""States in which a copy still awaits the partner's acknowledgement."""

# When two events carry the same time, the causal order of the pipeline decides.
_RANK: dict[str, int] = {
    EventType.SUBMITTED: 0,
    EventType.AMENDED: 1,
    EventType.REROUTE_REQUESTED: 2,
    EventType.ROUTED: 3,
    EventType.DELIVERED: 4,
    EventType.STATUS_REPORTED: 5,
    EventType.STATUS_CHANGED: 6,
    EventType.STATUS_REJECTED: 7,
    EventType.ESCALATED: 8,
}
_OTHER_RANK = 9


@dataclass(frozen=True)
class RoutedPartner:
    """One recipient of a routing decision: its priority, the rules that chose it, its copy."""

    partner: str
    priority: str
    rule_ids: tuple[str, ...] = ()
    delivery_id: str = ""


@dataclass(frozen=True)
class TraceEvent:
    """One event about a referral, reduced to the operational fields the timeline needs.

    Which fields are set depends on `event_type`: `state` is the state a delivery reached (or the
    state a report asked for), `previous_state` the one before (or a refused report's current
    state), `acknowledge_by` a delivery's deadline (an escalation's passed deadline), `reason` a
    decline reason, a refusal's reason or a consent scope (never free text from people).
    """

    event_id: str
    referral_id: str
    event_type: str
    occurred_at: datetime
    trace_id: str = ""
    source: str = ""
    received_at: datetime | None = None
    delivery_id: str = ""
    partner: str = ""
    state: DeliveryState | None = None
    previous_state: DeliveryState | None = None
    priority: str = ""
    acknowledge_by: datetime | None = None
    policy_version: str = ""
    rule_ids: tuple[str, ...] = ()
    partners: tuple[RoutedPartner, ...] = ()
    reason: str = ""
    outcome: str = ""
    victim_ref: str = ""


@dataclass(frozen=True)
class DeliveryStatus:
    """Where one partner's copy stands."""

    delivery_id: str
    partner: str
    state: DeliveryState
    priority: str = ""
    acknowledge_by: datetime | None = None
    overdue: bool = False


@dataclass(frozen=True)
class ReferralSummary:
    """Where a referral stands: its origin, priority, trace and every partner copy."""

    referral_id: str
    source: str = ""
    priority: str = ""
    received_at: datetime | None = None
    trace_id: str = ""
    policy_version: str = ""
    deliveries: tuple[DeliveryStatus, ...] = ()


@dataclass(frozen=True)
class TimelineStep:
    """One step in a referral's life, as shown to operators (and sent by the query API)."""

    occurred_at: datetime
    event_type: str
    partner: str = ""
    state: DeliveryState | None = None
    detail: str = ""


@dataclass(frozen=True)
class ReferralTimeline:
    """A referral's summary and its steps, oldest first, with the latency of each."""

    summary: ReferralSummary
    steps: tuple[TimelineStep, ...] = ()
    latencies: tuple[timedelta | None, ...] = ()


def ordered(events: Iterable[TraceEvent]) -> list[TraceEvent]:
    """Events oldest first; ties broken by pipeline order, then by id (a stable order)."""
    return sorted(
        events, key=lambda e: (e.occurred_at, _RANK.get(e.event_type, _OTHER_RANK), e.event_id)
    )


def is_overdue(status: DeliveryStatus, now: datetime) -> bool:
    """Past its acknowledgement deadline and still not acknowledged (nor closed)."""
    return (
        status.state in UNACKNOWLEDGED_STATES
        and status.acknowledge_by is not None
        and now > status.acknowledge_by
    )


def current_deliveries(events: Iterable[TraceEvent]) -> list[DeliveryStatus]:
    """Every partner copy of a referral with its current state, in the order they appeared.

    The state is what the lifecycle tracker last recorded (`DeliveryStatusChanged`, and the
    system's `DeliveryEscalated`); a partner's report alone changes nothing until it is accepted.
    Overdue is left False here: it depends on the time of the question (see `fold`).
    """
    found: dict[str, DeliveryStatus] = {}
    for event in ordered(events):
        if not event.delivery_id:
            continue
        known = found.get(event.delivery_id)
        if event.event_type == EventType.DELIVERED:
            found[event.delivery_id] = DeliveryStatus(
                event.delivery_id,
                event.partner,
                known.state if known else DeliveryState.DELIVERED,
                event.priority or (known.priority if known else ""),
                event.acknowledge_by,
            )
        elif event.event_type == EventType.STATUS_CHANGED and event.state is not None:
            found[event.delivery_id] = DeliveryStatus(
                event.delivery_id,
                event.partner or (known.partner if known else ""),
                event.state,
                known.priority if known else "",
                known.acknowledge_by if known else None,
            )
        elif event.event_type == EventType.ESCALATED:
            state = known.state if known else DeliveryState.DELIVERED
            found[event.delivery_id] = DeliveryStatus(
                event.delivery_id,
                event.partner or (known.partner if known else ""),
                DeliveryState.ESCALATED if state is DeliveryState.DELIVERED else state,
                known.priority if known else "",
                (known.acknowledge_by if known else None) or event.acknowledge_by,
            )
    return list(found.values())


def summarize(referral_id: str, events: Sequence[TraceEvent], *, now: datetime) -> ReferralSummary:
    """Where the referral stands at `now`."""
    chronological = ordered(events)
    submitted = [e for e in chronological if e.event_type == EventType.SUBMITTED]
    routed = [e for e in chronological if e.event_type == EventType.ROUTED]
    source = next((e.source for e in submitted + routed if e.source), "")
    received_at = next((e.received_at for e in submitted if e.received_at), None)
    # The referral's trace starts at the intake; later hops continue it. A status report made
    # through the partner API starts a trace of its own, so it never names the referral's.
    trace_id = next((e.trace_id for e in submitted if e.trace_id), "") or next(
        (e.trace_id for e in chronological if e.trace_id), ""
    )
    deliveries = tuple(
        DeliveryStatus(
            d.delivery_id, d.partner, d.state, d.priority, d.acknowledge_by, is_overdue(d, now)
        )
        for d in current_deliveries(chronological)
    )
    return ReferralSummary(
        referral_id=referral_id,
        source=source,
        priority=routed[-1].priority if routed else "",
        received_at=received_at,
        trace_id=trace_id,
        policy_version=routed[-1].policy_version if routed else "",
        deliveries=deliveries,
    )


def fold(referral_id: str, events: Sequence[TraceEvent], *, now: datetime) -> ReferralTimeline:
    """A referral's summary at `now` and its steps, oldest first, with latencies."""
    chronological = [e for e in ordered(events) if e.referral_id == referral_id]
    steps = tuple(step_of(event) for event in chronological)
    return ReferralTimeline(
        summary=summarize(referral_id, chronological, now=now),
        steps=steps,
        latencies=tuple(step_latencies(steps)),
    )


def step_of(event: TraceEvent) -> TimelineStep:
    """The step an event shows as, with a short description built from operational fields."""
    return TimelineStep(
        occurred_at=event.occurred_at,
        event_type=event.event_type,
        partner=event.partner,
        state=_state_shown(event),
        detail=_detail(event),
    )


def _state_shown(event: TraceEvent) -> DeliveryState | None:
    if event.event_type == EventType.DELIVERED:
        return DeliveryState.DELIVERED
    if event.event_type == EventType.ESCALATED:
        return DeliveryState.ESCALATED
    return event.state


def _when(moment: datetime | None) -> str:
    return format_time(moment) if moment else "-"


def _detail(event: TraceEvent) -> str:
    kind = event.event_type
    if kind == EventType.SUBMITTED:
        return f"received from {event.source or 'an unknown source'}"
    if kind == EventType.AMENDED:
        return "amended by the source"
    if kind == EventType.WITHDRAWN:
        return "withdrawn by the source"
    if kind == EventType.ROUTED:
        recipients = ", ".join(
            f"{p.partner} ({p.priority}, {'+'.join(p.rule_ids) or '-'})" for p in event.partners
        )
        return (
            f"priority {event.priority or '-'}, rules {' '.join(event.rule_ids) or '-'}, "
            f"policy {event.policy_version or '-'} -> {recipients or 'no partner'}"
        )
    if kind == EventType.DELIVERED:
        return (
            f"delivery {event.delivery_id}, priority {event.priority or '-'}, "
            f"acknowledge by {_when(event.acknowledge_by)}"
        )
    if kind == EventType.STATUS_CHANGED:
        previous = event.previous_state.value if event.previous_state else "-"
        text = f"{previous} -> {event.state.value if event.state else '-'}"
        if event.reason:
            text += f" ({event.reason})"
        if event.outcome:
            text += f", outcome {event.outcome}"
        return f"{text}, delivery {event.delivery_id}"
    if kind == EventType.STATUS_REPORTED:
        attempted = event.state.value if event.state else "-"
        return f"{event.partner or 'partner'} reported {attempted}, delivery {event.delivery_id}"
    if kind == EventType.STATUS_REJECTED:
        attempted = event.state.value if event.state else "-"
        return f"refused {attempted} from {event.partner or '-'}: {event.reason or 'no reason'}"
    if kind == EventType.ESCALATED:
        return (
            f"not acknowledged by {_when(event.acknowledge_by)}: escalated, "
            f"delivery {event.delivery_id}"
        )
    if kind == EventType.REROUTE_REQUESTED:
        return (
            f"{event.partner or 'a partner'} declined ({event.reason or '-'}): "
            "sent on to the next candidate"
        )
    if kind == EventType.CONSENT_GRANTED:
        return f"consent for victim {event.victim_ref or '-'}: {event.reason or '-'}"
    if kind == EventType.CONSENT_WITHDRAWN:
        return f"consent withdrawn for victim {event.victim_ref or '-'}: {event.reason or '-'}"
    return kind.rsplit(".", 1)[-1]


_REFERRAL_ANCHORS = frozenset({EventType.SUBMITTED, EventType.AMENDED, EventType.ROUTED})
_PARTNER_HOPS = frozenset({EventType.STATUS_CHANGED, EventType.ESCALATED})


def step_latencies(steps: Sequence[TimelineStep]) -> list[timedelta | None]:
    """The time since the step each step follows (None where it follows none); see the module
    docstring. `steps` must be oldest first, as `fold` and the query API return them."""
    referral_anchor: datetime | None = None
    routed_anchor: datetime | None = None
    partner_anchor: dict[str, datetime] = {}
    latencies: list[timedelta | None] = []

    def since(anchor: datetime | None, moment: datetime) -> timedelta | None:
        return None if anchor is None else max(timedelta(0), moment - anchor)

    for step in steps:
        kind, moment = step.event_type, step.occurred_at
        if kind == EventType.SUBMITTED:
            latencies.append(None)
        elif kind == EventType.ROUTED:
            latencies.append(since(referral_anchor, moment))
            routed_anchor = moment
        elif kind == EventType.DELIVERED:
            latencies.append(since(routed_anchor or referral_anchor, moment))
            partner_anchor[step.partner] = moment
        elif kind == EventType.REROUTE_REQUESTED:
            latencies.append(since(partner_anchor.get(step.partner, referral_anchor), moment))
            referral_anchor = moment
        elif kind in _PARTNER_HOPS:
            latencies.append(since(partner_anchor.get(step.partner), moment))
            partner_anchor[step.partner] = moment
        elif step.partner and step.partner in partner_anchor:
            latencies.append(since(partner_anchor[step.partner], moment))
        else:
            latencies.append(since(referral_anchor, moment))
        if kind in _REFERRAL_ANCHORS:
            referral_anchor = moment
    return latencies


def format_time(moment: datetime) -> str:
    """UTC, to the millisecond, e.g. 2025-03-01T15:02:11.120Z."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def format_latency(latency: timedelta | None) -> str:
    """A latency for people: 14 ms, 2.3 s, 4 min 01 s, 2 h 05 min, 3 d 4 h."""
    if latency is None:
        return ""
    seconds = latency.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
