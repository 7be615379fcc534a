"""`refctl trace REFERRAL_ID` and `refctl referrals`: where referrals stand and how they got there.

An operator asked "did CBP get ref-...? when? is it late?" should not have to read topics. Both
commands ask the timeline service's `ReferralQueryService` (`REFERRAL_QUERY_GRPC_ADDR`), which
returns ids, partners, states and times only, never personal data.

`trace` draws one referral as a tree: the referral, its routing decision (rules, policy), and
under it each partner's copy going DELIVERED -> ACKNOWLEDGED -> ..., every step with its time
(UTC) and the latency since the step it follows, OVERDUE where an acknowledgement is late, and
the OpenTelemetry trace id to look the referral up in the tracing backend. `referrals` lists
referrals, newest first, optionally only overdue ones, one partner's, or one state's.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import json_format

from ctroute.referral.v1 import lifecycle_pb2, query_pb2, query_pb2_grpc
from plumbing import config
from refctl.output import explain_rpc_error, fail
from referral.domain.lifecycle import DeliveryState
from referral.domain.timeline import (
    EventType,
    TimelineStep,
    format_latency,
    format_time,
    step_latencies,
)

STATES = [state.value for state in DeliveryState]
MAX_LIMIT = 1000

_REFERRAL_LABELS = {
    EventType.SUBMITTED: "submitted",
    EventType.AMENDED: "amended",
    EventType.WITHDRAWN: "withdrawn",
    EventType.ROUTED: "routed",
    EventType.REROUTE_REQUESTED: "re-route",
    EventType.CONSENT_GRANTED: "consent",
    EventType.CONSENT_WITHDRAWN: "consent withdrawn",
}


def _state_name(value: int) -> str:
    if not value:
        return ""
    try:
        return str(lifecycle_pb2.DeliveryState.Name(value)).removeprefix("DELIVERY_STATE_")  # type: ignore[arg-type]
    except ValueError:
        return str(value)


def _priority_name(value: int) -> str:
    if not value:
        return "-"
    try:
        return str(lifecycle_pb2.Priority.Name(value)).removeprefix("PRIORITY_")  # type: ignore[arg-type]
    except ValueError:
        return str(value)


def _time_of(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    moment: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return moment


def _shown(moment: datetime | None) -> str:
    return format_time(moment) if moment else "-"


def steps_of(response: query_pb2.GetReferralResponse) -> list[TimelineStep]:
    """The answer's timeline as the domain's steps (to measure latencies the same way)."""
    steps = []
    for entry in response.timeline:
        name = _state_name(entry.state)
        steps.append(
            TimelineStep(
                occurred_at=entry.occurred_at.ToDatetime(tzinfo=UTC),
                event_type=entry.event_type,
                partner=entry.partner,
                state=DeliveryState(name) if name in STATES else None,
                detail=entry.detail,
            )
        )
    return steps


def _label(step: TimelineStep) -> str:
    kind = step.event_type
    if kind in _REFERRAL_LABELS:
        return _REFERRAL_LABELS[EventType(kind)]
    state = step.state.value if step.state else ""
    if kind == EventType.STATUS_REPORTED:
        return f"reported {state}"
    if kind == EventType.STATUS_REJECTED:
        return f"refused {state}"
    if state:
        return state
    return kind.rsplit(".", 1)[-1]


@dataclass
class _Node:
    text: str
    children: list[_Node] = field(default_factory=list)


def _step_line(step: TimelineStep, latency: timedelta | None) -> str:
    took = f"+{format_latency(latency)}" if latency is not None else ""
    return f"{format_time(step.occurred_at)}  {_label(step):<22} {took:<14} {step.detail}".rstrip()


def render_tree(response: query_pb2.GetReferralResponse) -> list[str]:
    """The referral as a tree, one line per node."""
    summary = response.summary
    steps = steps_of(response)
    latencies = step_latencies(steps)
    overdue = [d for d in summary.deliveries if d.overdue]
    head = (
        f"{summary.referral_id}  from {summary.source or '-'}  "
        f"priority {_priority_name(summary.priority)}  "
        f"received {_shown(_time_of(summary, 'received_at'))}"
    )
    if overdue:
        head += f"  OVERDUE: {', '.join(sorted({d.partner for d in overdue}))}"
    root = _Node(head)
    root.children.append(_Node(f"trace {summary.trace_id or '(none recorded)'}"))

    partner_nodes: dict[str, _Node] = {}
    routed_node: _Node | None = None
    for step, latency in zip(steps, latencies, strict=True):
        node = _Node(_step_line(step, latency))
        if step.event_type in _REFERRAL_LABELS or not step.partner:
            root.children.append(node)
            if step.event_type == EventType.ROUTED:
                routed_node = node
            continue
        branch = partner_nodes.get(step.partner)
        if branch is None:
            branch = _Node(_partner_header(summary, step.partner))
            partner_nodes[step.partner] = branch
            (routed_node or root).children.append(branch)
        branch.children.append(node)
    return _draw(root)


def _partner_header(summary: query_pb2.ReferralSummary, partner: str) -> str:
    copies = [d for d in summary.deliveries if d.partner == partner]
    if not copies:
        return partner
    parts = []
    for copy in copies:
        text = (
            f"{_state_name(copy.state) or '-'}  delivery {copy.delivery_id}  "
            f"acknowledge by {_shown(_time_of(copy, 'acknowledge_by'))}"
        )
        if copy.overdue:
            text += "  OVERDUE"
        parts.append(text)
    return f"{partner}  " + "; ".join(parts)


def _draw(root: _Node) -> list[str]:
    lines = [root.text]

    def walk(node: _Node, prefix: str) -> None:
        for index, child in enumerate(node.children):
            last = index == len(node.children) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{child.text}")
            walk(child, prefix + ("    " if last else "│   "))

    walk(root, "")
    return lines


def trace_as_json(response: query_pb2.GetReferralResponse) -> dict[str, Any]:
    """The answer in protobuf's JSON mapping, each timeline entry with its latency in ms."""
    document: dict[str, Any] = json_format.MessageToDict(response, preserving_proto_field_name=True)
    latencies = step_latencies(steps_of(response))
    for entry, latency in zip(document.get("timeline", []), latencies, strict=True):
        entry["latency_ms"] = None if latency is None else round(latency.total_seconds() * 1000, 3)
    return document


def _rpc_failure(error: grpc.RpcError, address: str, what: str) -> int:
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return fail(
            f"cannot reach the query API at {address}: is the timeline service running? "
            "(`python -m referral timeline`, or set REFERRAL_QUERY_GRPC_ADDR)"
        )
    if error.code() == grpc.StatusCode.NOT_FOUND:
        return fail(f"{error.details()} (a new {what} takes a moment to reach it)")
    return fail(explain_rpc_error(error))


def cmd_trace(args: argparse.Namespace) -> int:
    request = query_pb2.GetReferralRequest(referral_id=args.referral_id)
    with grpc.insecure_channel(args.address) as channel:
        stub = query_pb2_grpc.ReferralQueryServiceStub(channel)
        try:
            response = stub.GetReferral(request, timeout=args.timeout)
        except grpc.RpcError as error:
            return _rpc_failure(error, args.address, "referral")
    if args.json:
        print(json.dumps(trace_as_json(response), indent=2))
    else:
        print("\n".join(render_tree(response)))
    return 0


def _deliveries_text(summary: query_pb2.ReferralSummary) -> str:
    return ", ".join(
        f"{d.partner} {_state_name(d.state) or '-'}" + (" OVERDUE" if d.overdue else "")
        for d in summary.deliveries
    )


def render_table(summaries: Sequence[query_pb2.ReferralSummary]) -> list[str]:
    """One row per referral under a header; columns sized to their content."""
    rows = [("REFERRAL", "RECEIVED", "SOURCE", "PRIORITY", "DELIVERIES")]
    rows += [
        (
            s.referral_id,
            _shown(_time_of(s, "received_at")),
            s.source or "-",
            _priority_name(s.priority),
            _deliveries_text(s) or "-",
        )
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    ]


def cmd_referrals(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_LIMIT:
        return fail(f"--limit must be between 1 and {MAX_LIMIT}")
    request = query_pb2.ListReferralsRequest(
        partner=args.partner or "",
        overdue_only=args.overdue,
        page_size=args.limit,
    )
    if args.state:
        request.state = lifecycle_pb2.DeliveryState.Value(f"DELIVERY_STATE_{args.state}")
    with grpc.insecure_channel(args.address) as channel:
        stub = query_pb2_grpc.ReferralQueryServiceStub(channel)
        try:
            response = stub.ListReferrals(request, timeout=args.timeout)
        except grpc.RpcError as error:
            return _rpc_failure(error, args.address, "referral")
    if args.json:
        for summary in response.referrals:
            document = json_format.MessageToDict(summary, preserving_proto_field_name=True)
            print(json.dumps(document, separators=(",", ":")))
        return 0
    if not response.referrals:
        print("no referral matches")
        return 0
    print("\n".join(render_table(response.referrals)))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=config.query_grpc_address(), help="query API (timeline service)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait")


def register(commands: Any) -> None:
    """Add `trace` and `referrals` to refctl."""
    trace = commands.add_parser(
        "trace", help="show a referral's path as a tree: hops, partners, states, latencies"
    )
    trace.add_argument("referral_id", help="the referral id, e.g. ref-49826c3b6e01559390a6")
    _common(trace)
    trace.set_defaults(run=cmd_trace)

    referrals = commands.add_parser(
        "referrals", help="list referrals, newest first (overdue, by partner, by state)"
    )
    referrals.add_argument(
        "--overdue", action="store_true", help="only referrals with a late acknowledgement"
    )
    referrals.add_argument("--partner", help="only referrals delivered to this partner")
    referrals.add_argument(
        "--state", choices=STATES, help="only referrals with a delivery in this state"
    )
    referrals.add_argument(
        "--limit", type=int, default=100, help=f"at most N referrals (1-{MAX_LIMIT})"
    )
    _common(referrals)
    referrals.set_defaults(run=cmd_referrals)
