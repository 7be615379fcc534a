"""Folding a referral's events into its timeline: current states, overdue marks and latencies per
hop, with explicit times; and what the timeline service keeps of a record (never personal data)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.protobuf.message import Message

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2
from plumbing.envelope import Envelope
from referral.adapters.trace_store import event_from_json, event_to_json
from referral.domain.lifecycle import DeliveryState
from referral.domain.timeline import (
    DeliveryStatus,
    EventType,
    RoutedPartner,
    TimelineStep,
    TraceEvent,
    fold,
    format_latency,
    format_time,
    is_overdue,
    step_latencies,
)
from referral.entrypoints.timeline_main import trace_event_of

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
S = DeliveryState
T0 = datetime(2025, 3, 3, 15, 2, 11, 120_000, tzinfo=UTC)
REF = "ref-49826c3b6e01559390a6"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
MS = timedelta(milliseconds=1)


def at(offset: timedelta) -> datetime:
    return T0 + offset


def submitted(offset: timedelta = timedelta(0), trace_id: str = TRACE) -> TraceEvent:
    return TraceEvent(
        "evt-submitted",
        REF,
        EventType.SUBMITTED,
        at(offset),
        trace_id=trace_id,
        source="cbp-eallegations",
        received_at=at(offset),
    )


def routed(
    offset: timedelta, *partners: str, event_id: str = "evt-routed", priority: str = "HIGH"
) -> TraceEvent:
    return TraceEvent(
        event_id,
        REF,
        EventType.ROUTED,
        at(offset),
        trace_id=TRACE,
        source="cbp-eallegations",
        priority=priority,
        policy_version="d3649d50e702",
        rule_ids=("R5",),
        partners=tuple(RoutedPartner(p, priority, ("R5",), f"dlv-{p}") for p in partners),
    )


def delivered(offset: timedelta, partner: str, deadline: timedelta) -> TraceEvent:
    return TraceEvent(
        f"evt-{partner}-delivered",
        REF,
        EventType.DELIVERED,
        at(offset),
        trace_id=TRACE,
        delivery_id=f"dlv-{partner}",
        partner=partner,
        state=S.DELIVERED,
        priority="HIGH",
        acknowledge_by=at(deadline),
    )


def changed(
    offset: timedelta,
    partner: str,
    previous: DeliveryState,
    state: DeliveryState,
    *,
    trace_id: str = TRACE,
    reason: str = "",
    outcome: str = "",
) -> TraceEvent:
    return TraceEvent(
        f"evt-{partner}-{state.value}",
        REF,
        EventType.STATUS_CHANGED,
        at(offset),
        trace_id=trace_id,
        delivery_id=f"dlv-{partner}",
        partner=partner,
        previous_state=previous,
        state=state,
        reason=reason,
        outcome=outcome,
    )


def reported(offset: timedelta, partner: str, state: DeliveryState) -> TraceEvent:
    return TraceEvent(
        f"evt-{partner}-reported-{state.value}",
        REF,
        EventType.STATUS_REPORTED,
        at(offset),
        trace_id=TRACE,
        delivery_id=f"dlv-{partner}",
        partner=partner,
        state=state,
    )


def closed_loop() -> list[TraceEvent]:
    """cbp: submitted, routed, delivered, acknowledged (reported first), accepted, completed."""
    return [
        submitted(),
        routed(60 * MS, "cbp"),
        delivered(70 * MS, "cbp", timedelta(hours=4)),
        reported(100 * MS, "cbp", S.ACKNOWLEDGED),
        changed(120 * MS, "cbp", S.DELIVERED, S.ACKNOWLEDGED),
        changed(timedelta(hours=1, milliseconds=120), "cbp", S.ACKNOWLEDGED, S.ACCEPTED),
        changed(
            timedelta(hours=3, milliseconds=120),
            "cbp",
            S.ACCEPTED,
            S.COMPLETED,
            trace_id="0" * 31 + "1",
            outcome="GOODS_DETAINED",
        ),
    ]


def test_a_closed_loop_folds_into_its_summary_and_steps_with_a_latency_per_hop() -> None:
    events = closed_loop()
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)

    timeline = fold(REF, shuffled, now=at(timedelta(hours=5)))

    summary = timeline.summary
    assert summary.referral_id == REF
    assert summary.source == "cbp-eallegations"
    assert summary.priority == "HIGH"
    assert summary.received_at == T0
    assert summary.policy_version == "d3649d50e702"
    # A report through the partner API starts its own trace; the referral's is the intake's.
    assert summary.trace_id == TRACE
    assert summary.deliveries == (
        DeliveryStatus("dlv-cbp", "cbp", S.COMPLETED, "HIGH", at(timedelta(hours=4)), False),
    )
    assert [(s.event_type, s.partner, s.state) for s in timeline.steps] == [
        (EventType.SUBMITTED, "", None),
        (EventType.ROUTED, "", None),
        (EventType.DELIVERED, "cbp", S.DELIVERED),
        (EventType.STATUS_REPORTED, "cbp", S.ACKNOWLEDGED),
        (EventType.STATUS_CHANGED, "cbp", S.ACKNOWLEDGED),
        (EventType.STATUS_CHANGED, "cbp", S.ACCEPTED),
        (EventType.STATUS_CHANGED, "cbp", S.COMPLETED),
    ]
    assert timeline.latencies == (
        None,  # submitted
        60 * MS,  # submitted -> routed
        10 * MS,  # routed -> delivered
        30 * MS,  # delivered -> reported (a report is no hop)
        50 * MS,  # delivered -> acknowledged
        timedelta(hours=1),  # acknowledged -> accepted
        timedelta(hours=2),  # accepted -> completed
    )
    details = [s.detail for s in timeline.steps]
    assert details[0] == "received from cbp-eallegations"
    assert details[1] == "priority HIGH, rules R5, policy d3649d50e702 -> cbp (HIGH, R5)"
    assert details[2] == (
        "delivery dlv-cbp, priority HIGH, acknowledge by 2025-03-03T19:02:11.120Z"
    )
    assert details[4] == "DELIVERED -> ACKNOWLEDGED, delivery dlv-cbp"
    assert details[6] == "ACCEPTED -> COMPLETED, outcome GOODS_DETAINED, delivery dlv-cbp"


def test_overdue_means_past_the_deadline_and_still_unacknowledged() -> None:
    deadline = timedelta(minutes=15)
    waiting = [submitted(), routed(10 * MS, "hsi"), delivered(20 * MS, "hsi", deadline)]

    def hsi(events: list[TraceEvent], now: timedelta) -> DeliveryStatus:
        (status,) = fold(REF, events, now=at(now)).summary.deliveries
        return status

    assert not hsi(waiting, deadline).overdue, "at the deadline is not past it"
    assert hsi(waiting, deadline + MS).overdue
    escalated = TraceEvent(
        "evt-escalated",
        REF,
        EventType.ESCALATED,
        at(deadline + timedelta(seconds=1)),
        delivery_id="dlv-hsi",
        partner="hsi",
        state=S.ESCALATED,
        acknowledge_by=at(deadline),
    )
    late = hsi([*waiting, escalated], timedelta(hours=1))
    assert (late.state, late.overdue) == (S.ESCALATED, True)
    acknowledged = changed(timedelta(hours=2), "hsi", S.ESCALATED, S.ACKNOWLEDGED)
    after = hsi([*waiting, escalated, acknowledged], timedelta(hours=3))
    assert (after.state, after.overdue) == (S.ACKNOWLEDGED, False)
    declined = changed(timedelta(minutes=1), "hsi", S.DELIVERED, S.DECLINED, reason="DUPLICATE")
    closed = hsi([*waiting, declined], timedelta(days=3))
    assert (closed.state, closed.overdue) == (S.DECLINED, False), "a closed copy is never late"

    status = DeliveryStatus("d", "p", S.DELIVERED, "HIGH", None)
    assert not is_overdue(status, at(timedelta(days=30))), "no deadline, never overdue"


def test_an_escalation_is_a_hop_and_a_late_acknowledgement_follows_it() -> None:
    events = [
        submitted(),
        routed(10 * MS, "cbp"),
        delivered(20 * MS, "cbp", timedelta(hours=4)),
        TraceEvent(
            "evt-escalated",
            REF,
            EventType.ESCALATED,
            at(timedelta(hours=4, minutes=1)),
            delivery_id="dlv-cbp",
            partner="cbp",
            state=S.ESCALATED,
            acknowledge_by=at(timedelta(hours=4)),
        ),
        changed(timedelta(hours=5), "cbp", S.ESCALATED, S.ACKNOWLEDGED),
    ]
    timeline = fold(REF, events, now=at(timedelta(hours=6)))
    assert timeline.latencies[3:] == (
        timedelta(hours=4, minutes=1) - 20 * MS,
        timedelta(minutes=59),
    )
    assert timeline.steps[3].state is S.ESCALATED
    assert timeline.steps[3].detail == (
        "not acknowledged by 2025-03-03T19:02:11.120Z: escalated, delivery dlv-cbp"
    )
    assert timeline.summary.deliveries[0].state is S.ACKNOWLEDGED


def test_partners_are_separate_chains_and_a_reroute_starts_a_new_routing() -> None:
    events = [
        submitted(),
        routed(50 * MS, "hsi", "ccht", priority="URGENT"),
        delivered(60 * MS, "hsi", timedelta(minutes=15)),
        delivered(61 * MS, "ccht", timedelta(minutes=15)),
        changed(200 * MS, "ccht", S.DELIVERED, S.ACKNOWLEDGED),
        changed(900 * MS, "hsi", S.DELIVERED, S.DECLINED, reason="OUT_OF_JURISDICTION"),
        TraceEvent(
            "evt-reroute",
            REF,
            EventType.REROUTE_REQUESTED,
            at(950 * MS),
            delivery_id="dlv-hsi",
            partner="hsi",
            reason="OUT_OF_JURISDICTION",
        ),
        routed(1000 * MS, "uscg", event_id="evt-routed-2"),
        delivered(1010 * MS, "uscg", timedelta(hours=4)),
        changed(1500 * MS, "uscg", S.DELIVERED, S.ACKNOWLEDGED),
    ]
    timeline = fold(REF, events, now=at(timedelta(hours=1)))
    by_step = {
        (s.event_type.rsplit(".", 1)[-1], s.partner, s.state): latency
        for s, latency in zip(timeline.steps, timeline.latencies, strict=True)
    }
    assert by_step[("DeliveryStatusChanged", "ccht", S.ACKNOWLEDGED)] == 139 * MS
    assert by_step[("DeliveryStatusChanged", "hsi", S.DECLINED)] == 840 * MS
    assert by_step[("DeliveryRerouteRequested", "hsi", None)] == 50 * MS  # from the decline
    assert timeline.latencies[7] == 50 * MS  # reroute -> routed again
    assert by_step[("ReferralDelivered", "uscg", S.DELIVERED)] == 10 * MS  # from the new routing
    assert by_step[("DeliveryStatusChanged", "uscg", S.ACKNOWLEDGED)] == 490 * MS
    assert timeline.steps[6].detail == (
        "hsi declined (OUT_OF_JURISDICTION): sent on to the next candidate"
    )
    assert timeline.steps[5].detail == (
        "DELIVERED -> DECLINED (OUT_OF_JURISDICTION), delivery dlv-hsi"
    )
    states = {d.partner: d.state for d in timeline.summary.deliveries}
    assert states == {"hsi": S.DECLINED, "ccht": S.ACKNOWLEDGED, "uscg": S.ACKNOWLEDGED}
    assert timeline.summary.priority == "HIGH", "the latest routing decides the priority"


def test_same_time_events_keep_the_pipeline_order_and_others_referrals_are_ignored() -> None:
    same = 5 * MS
    other = TraceEvent("evt-other", "ref-other", EventType.SUBMITTED, at(same))
    events = [delivered(same, "cbp", timedelta(hours=4)), routed(same, "cbp"), submitted(), other]
    timeline = fold(REF, events, now=T0)
    assert [s.event_type for s in timeline.steps] == [
        EventType.SUBMITTED,
        EventType.ROUTED,
        EventType.DELIVERED,
    ]
    assert timeline.latencies == (None, same, timedelta(0))


def test_without_a_submitted_event_the_earliest_trace_id_and_the_routed_source_serve() -> None:
    events = [routed(10 * MS, "cbp"), delivered(20 * MS, "cbp", timedelta(hours=4))]
    summary = fold(REF, events, now=T0).summary
    assert (summary.trace_id, summary.source, summary.received_at) == (
        TRACE,
        "cbp-eallegations",
        None,
    )
    steps = fold(REF, events, now=T0).steps
    assert step_latencies(steps) == [None, 10 * MS]


def test_latencies_measured_from_the_query_apis_steps_match_the_fold() -> None:
    timeline = fold(REF, closed_loop(), now=T0)
    rebuilt = [
        TimelineStep(s.occurred_at, s.event_type, s.partner, s.state, s.detail)
        for s in timeline.steps
    ]
    assert tuple(step_latencies(rebuilt)) == timeline.latencies


def test_times_and_latencies_read_well() -> None:
    assert format_time(T0) == "2025-03-03T15:02:11.120Z"
    assert format_time(T0.replace(tzinfo=None)) == "2025-03-03T15:02:11.120Z"
    assert [
        format_latency(d)
        for d in (
            14 * MS,
            timedelta(seconds=2.34),
            timedelta(minutes=4, seconds=1),
            timedelta(hours=2, minutes=5),
            timedelta(days=3, hours=4),
        )
    ] == ["14 ms", "2.3 s", "4 min 01 s", "2 h 05 min", "3 d 4 h"]
    assert format_latency(None) == ""


def test_the_stored_form_of_an_event_reads_back_as_the_same_event() -> None:
    for event in [*closed_loop(), routed(1 * MS, "hsi", "ccht")]:
        assert event_from_json(event_to_json(event)) == event


# --- what the timeline service keeps of a record ---------------------------------------------


def _envelope(message: Message, event_id: str = "evt-1") -> Envelope:
    return Envelope(event_id, message.DESCRIPTOR.full_name, "tests", T0)


def _strings(message: Message) -> set[str]:
    """Every string value anywhere in a message, but labels as short as "v1" or "FL" (they
    also occur in event type names and ids)."""
    found: set[str] = set()
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        for item in values:
            if isinstance(item, Message):
                found |= _strings(item)
            elif isinstance(item, str) and len(item) > 3:
                found.add(item)
    return found


def test_of_a_submitted_referral_only_its_id_source_and_receipt_time_are_kept() -> None:
    event = lifecycle_pb2.ReferralSubmitted.FromString(
        (GOLDEN / "referral_submitted.binpb").read_bytes()
    )
    personal = _strings(event) - {event.referral.referral_id, event.referral.source}
    assert "Crew Member Example" in personal, "the golden referral carries personal data"
    headers = [("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01".encode())]

    kept = trace_event_of("referrals.submitted", _envelope(event), event, headers)

    assert kept == TraceEvent(
        event_id="evt-1",
        referral_id=event.referral.referral_id,
        event_type=EventType.SUBMITTED,
        occurred_at=event.referral.received_at.ToDatetime(tzinfo=UTC),
        trace_id=TRACE,
        source=event.referral.source,
        received_at=event.referral.received_at.ToDatetime(tzinfo=UTC),
    )
    stored = event_to_json(kept)
    assert not [value for value in personal if value in stored]


def test_a_partners_note_and_an_amendments_content_and_reason_are_never_kept() -> None:
    report = delivery_pb2.DeliveryStatusReported.FromString(
        (GOLDEN / "delivery_status_reported.binpb").read_bytes()
    )
    assert report.report.note
    kept = trace_event_of("partner.ngo-southeast.status", _envelope(report), report, [])
    assert kept is not None
    assert (kept.partner, kept.state, kept.delivery_id) == (
        "ngo-southeast",
        S.DECLINED,
        report.report.delivery_id,
    )
    assert kept.occurred_at == report.reported_at.ToDatetime(tzinfo=UTC)
    assert report.report.note not in event_to_json(kept)

    golden = lifecycle_pb2.ReferralSubmitted.FromString(
        (GOLDEN / "referral_submitted.binpb").read_bytes()
    )
    amended = lifecycle_pb2.ReferralAmended(referral=golden.referral, reason="victim moved")
    kept = trace_event_of("referrals.submitted", _envelope(amended), amended, [])
    assert kept is not None
    stored = event_to_json(kept)
    personal = _strings(amended) - {golden.referral.referral_id, golden.referral.source}
    assert not [value for value in personal if value in stored]
    assert kept.occurred_at == T0, "an amendment's time is its record's"


def test_lifecycle_events_keep_their_operational_fields_and_unrelated_records_are_dropped() -> None:
    routed_event = lifecycle_pb2.ReferralRouted(referral_id=REF, source="hsi-tipline")
    routed_event.decision.policy_version = "d3649d50e702"
    routed_event.decision.priority = lifecycle_pb2.PRIORITY_URGENT
    routed_event.decision.matched_rules.add(rule_id="R1", reason="sex trafficking indicator")
    routed_event.decision.partners.add(
        partner="hsi",
        priority=lifecycle_pb2.PRIORITY_URGENT,
        rule_ids=["R1"],
        delivery_id="dlv-1",
        withheld_victim_refs=["v2"],
    )
    routed_event.decision.decided_at.FromDatetime(T0 - MS)
    kept = trace_event_of("referrals.lifecycle", _envelope(routed_event), routed_event, [])
    assert kept is not None
    assert kept.occurred_at == T0 - MS, "a routing happened when it was decided"
    assert kept.partners == (RoutedPartner("hsi", "URGENT", ("R1",), "dlv-1"),)
    assert (kept.priority, kept.rule_ids, kept.policy_version) == (
        "URGENT",
        ("R1",),
        "d3649d50e702",
    )

    rejected = lifecycle_pb2.DeliveryStatusRejected(
        referral_id="",
        delivery_id="dlv-unknown",
        reporting_partner="cbp",
        attempted_state=lifecycle_pb2.DELIVERY_STATE_ACCEPTED,
        reason="no delivery dlv-unknown is known",
    )
    assert trace_event_of("referrals.lifecycle", _envelope(rejected), rejected, []) is None

    from ctroute.operations.v1 import dead_letter_pb2

    redriven = dead_letter_pb2.DeadLetterRedriven(dead_letter_id="0:1", operator="someone")
    assert trace_event_of("referrals.lifecycle", _envelope(redriven), redriven, []) is None
