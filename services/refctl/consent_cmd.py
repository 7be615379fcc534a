"""`refctl consent grant|withdraw`: a victim specialist records a victim's consent decision.

The command calls the victim-services consent API rather than publishing the event itself:
victim services checks the decision (a victim it has a case for, a time-limited consent), keeps
the record, and is the only service allowed to publish consent events. The router then honours
the event: a grant can add recipients (USCIS after immigration-relief consent), a withdrawal
recalls the victim's identity from partners that received it on that consent.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import grpc

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import referral_pb2
from plumbing import config
from refctl.output import explain_rpc_error, fail

SCOPES = [
    name.removeprefix("CONSENT_SCOPE_")
    for name, _ in referral_pb2.ConsentScope.items()
    if name != "CONSENT_SCOPE_UNSPECIFIED"
]


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC (argparse type)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time, e.g. 2026-12-31T23:59:00Z"
        ) from error
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _scope(name: str) -> referral_pb2.ConsentScope.ValueType:
    return referral_pb2.ConsentScope.Value(f"CONSENT_SCOPE_{name}")


def _stub(channel: grpc.Channel) -> delivery_pb2_grpc.VictimConsentServiceStub:
    return delivery_pb2_grpc.VictimConsentServiceStub(channel)


def _explain(error: grpc.RpcError, address: str) -> str:
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return (
            f"{error.code().name}: {error.details()}\n"
            f"  is victim services running at {address}? "
            "(start it with `make run`, or set VICTIM_SERVICES_GRPC_ADDR)"
        )
    return explain_rpc_error(error)


def cmd_grant(args: argparse.Namespace) -> int:
    request = delivery_pb2.GrantConsentRequest(
        referral_id=args.referral_id, victim_ref=args.victim_ref, scope=_scope(args.scope)
    )
    request.expires_at.FromDatetime(args.expires)
    if args.granted is not None:
        request.granted_at.FromDatetime(args.granted)
    with grpc.insecure_channel(args.address) as channel:
        try:
            response = _stub(channel).GrantConsent(request, timeout=args.timeout)
        except grpc.RpcError as error:
            return fail(_explain(error, args.address))
    expires = response.consent.expires_at.ToDatetime(tzinfo=UTC).isoformat()
    print(
        f"{args.referral_id} {args.victim_ref}: {args.scope} consent recorded until {expires} "
        f"(event {response.event_id})"
    )
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    request = delivery_pb2.WithdrawConsentRequest(
        referral_id=args.referral_id, victim_ref=args.victim_ref, scope=_scope(args.scope)
    )
    if args.at is not None:
        request.withdrawn_at.FromDatetime(args.at)
    with grpc.insecure_channel(args.address) as channel:
        try:
            response = _stub(channel).WithdrawConsent(request, timeout=args.timeout)
        except grpc.RpcError as error:
            return fail(_explain(error, args.address))
    at = response.withdrawn_at.ToDatetime(tzinfo=UTC).isoformat()
    print(
        f"{args.referral_id} {args.victim_ref}: {args.scope} consent withdrawn at {at} "
        f"(event {response.event_id})"
    )
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("referral_id", help="the referral the victim belongs to")
    parser.add_argument("victim_ref", help="the victim's reference within it, e.g. v1")
    parser.add_argument("scope", choices=SCOPES, help="the purpose of the consent")
    parser.add_argument(
        "--address",
        default=config.victim_services_grpc_address(),
        help="victim-services consent API address",
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait")


def register(commands: Any) -> None:
    """Add `consent grant` and `consent withdraw` to refctl."""
    consent = commands.add_parser("consent", help="record a victim's consent decision")
    actions = consent.add_subparsers(dest="action", required=True, metavar="ACTION")

    grant = actions.add_parser("grant", help="record a time-limited consent for one scope")
    _common(grant)
    grant.add_argument(
        "--expires", type=parse_time, required=True, help="when the consent lapses (ISO 8601)"
    )
    grant.add_argument(
        "--granted", type=parse_time, help="when the victim gave it (ISO 8601; default: now)"
    )
    grant.set_defaults(run=cmd_grant)

    withdraw = actions.add_parser("withdraw", help="record that the victim withdrew a consent")
    _common(withdraw)
    withdraw.add_argument(
        "--at", type=parse_time, help="when the victim withdrew it (ISO 8601; default: now)"
    )
    withdraw.set_defaults(run=cmd_withdraw)
