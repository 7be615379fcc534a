"""`refctl ack` and `refctl status`: a partner reports progress on one of its deliveries."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import lifecycle_pb2
from plumbing import config
from plumbing.grpc_auth import client_channel
from plumbing.tokens import PARTNER_API_AUDIENCE
from refctl.output import explain_rpc_error, fail

PARTNER_STATES = [
    "ACKNOWLEDGED",
    "ACCEPTED",
    "DECLINED",
    "IN_PROGRESS",
    "ON_HOLD",
    "COMPLETED",
    "FAILED",
]
DECLINE_REASONS = [
    name.removeprefix("DECLINE_REASON_")
    for name, _ in lifecycle_pb2.DeclineReason.items()
    if name != "DECLINE_REASON_UNSPECIFIED"
]
OUTCOMES = [
    name.removeprefix("OUTCOME_")
    for name, _ in lifecycle_pb2.Outcome.items()
    if name != "OUTCOME_UNSPECIFIED"
]


def report(args: argparse.Namespace, state: str) -> int:
    request = delivery_pb2.ReportDeliveryStatusRequest(
        delivery_id=args.delivery_id,
        partner=args.partner,
        state=lifecycle_pb2.DeliveryState.Value(f"DELIVERY_STATE_{state}"),
        note=getattr(args, "note", "") or "",
    )
    if getattr(args, "reason", None):
        request.decline_reason = lifecycle_pb2.DeclineReason.Value(f"DECLINE_REASON_{args.reason}")
    if getattr(args, "outcome", None):
        request.outcome = lifecycle_pb2.Outcome.Value(f"OUTCOME_{args.outcome}")
    try:
        channel = client_channel(
            args.address,
            config.partner_api_tls_dir(),
            config.partner_signing_key(),
            audience=PARTNER_API_AUDIENCE,
            key_setting="CTROUTE_PARTNER_KEY",
        )
    except (OSError, ValueError) as error:
        return fail(f"cannot load the partner API credentials: {error}")
    with channel:
        stub = delivery_pb2_grpc.PartnerStatusServiceStub(channel)
        try:
            response = stub.ReportDeliveryStatus(request, timeout=args.timeout)
        except grpc.RpcError as error:
            return fail(explain_rpc_error(error))
    new_state = lifecycle_pb2.DeliveryState.Name(response.state).removeprefix("DELIVERY_STATE_")
    print(f"{args.delivery_id}: {new_state}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("delivery_id", help="the delivery id from the partner's inbox")
    parser.add_argument("--partner", required=True, help="your partner id, e.g. hsi")
    parser.add_argument(
        "--address", default=config.partner_grpc_address(), help="partner status API address"
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait")


def register(commands: Any) -> None:
    """Add `ack` and `status` to refctl."""
    ack = commands.add_parser("ack", help="acknowledge one of your deliveries")
    _common(ack)
    ack.set_defaults(run=lambda args: report(args, "ACKNOWLEDGED"))

    status = commands.add_parser("status", help="report the status of one of your deliveries")
    _common(status)
    status.add_argument("state", choices=PARTNER_STATES, help="the state you report")
    status.add_argument("--reason", choices=DECLINE_REASONS, help="required with DECLINED")
    status.add_argument("--outcome", choices=OUTCOMES, help="required with COMPLETED")
    status.add_argument("--note", help="free text for the record (treated as sensitive)")
    status.set_defaults(run=lambda args: report(args, args.state))
