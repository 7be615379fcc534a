"""refctl: submit referrals, watch a partner's inbox, trace, audit, and manage partners.

Output is for people: one line per thing that happened, errors that say what to do next.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc
from plumbing import config
from plumbing.grpc_auth import client_channel
from plumbing.tokens import INTAKE_AUDIENCE
from refctl import (
    audit_cmd,
    consent_cmd,
    dlq_cmd,
    partner_cmd,
    policy_cmd,
    status_cmd,
    trace_cmd,
)
from refctl.output import explain_rpc_error, fail


def _intake_channel(address: str) -> grpc.Channel:
    """TLS with a token signed by the system's key when CTROUTE_INTAKE_TLS_DIR is set (the
    intake's `ca.pem` is trusted, CTROUTE_INTAKE_KEY signs as `<system>.key`)."""
    return client_channel(
        address,
        config.intake_tls_dir(),
        config.intake_signing_key(),
        audience=INTAKE_AUDIENCE,
        key_setting="CTROUTE_INTAKE_KEY",
    )


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        return fail(f"cannot read {path}: {error.strerror}")
    request = intake_pb2.SubmitReferralRequest()
    try:
        json_format.Parse(text, request)
    except json_format.ParseError as error:
        return fail(
            f"{path} is not a SubmitReferralRequest in protobuf's JSON mapping: {error}\n"
            '  expected {"referral": {"source": ..., "sourceReference": ..., ...}}'
        )
    try:
        channel = _intake_channel(args.address)
    except (OSError, ValueError) as error:
        return fail(f"cannot load the intake credentials: {error}")
    with channel:
        stub = intake_pb2_grpc.ReferralIntakeServiceStub(channel)
        try:
            response = stub.SubmitReferral(request, timeout=args.timeout)
        except grpc.RpcError as error:
            return fail(explain_rpc_error(error))
    if response.duplicate:
        print(f"{response.referral_id} (already submitted; no new referral was created)")
    else:
        print(response.referral_id)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from refctl.tail import tail_partner

    return tail_partner(
        args.partner,
        bootstrap_servers=args.bootstrap_servers,
        from_beginning=args.from_beginning,
        as_json=args.json,
        limit=args.limit,
        timeout=args.timeout,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refctl", description="Operate and use the counter-trafficking referral router."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="submit a referral from a JSON file")
    submit.add_argument("file", help="SubmitReferralRequest in protobuf's JSON mapping")
    submit.add_argument("--address", default=config.grpc_address(), help="intake gRPC address")
    submit.add_argument("--timeout", type=float, default=15.0, help="seconds to wait")
    submit.set_defaults(run=cmd_submit)

    tail = commands.add_parser("tail", help="print deliveries arriving for a partner")
    tail.add_argument("partner", help="partner id, e.g. hsi or ngo-southeast")
    tail.add_argument("--bootstrap-servers", default=config.kafka_bootstrap_servers())
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest delivery")
    tail.add_argument("--json", action="store_true", help="print each delivery as JSON")
    tail.add_argument("--limit", type=int, default=0, help="stop after N deliveries (0: never)")
    tail.add_argument(
        "--timeout", type=float, default=0, help="stop after N idle seconds (0: never)"
    )
    tail.set_defaults(run=cmd_tail)

    consent_cmd.register(commands)
    dlq_cmd.register(commands)
    policy_cmd.register(commands)
    status_cmd.register(commands)
    trace_cmd.register(commands)
    audit_cmd.register(commands)
    partner_cmd.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
