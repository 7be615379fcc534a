"""How refctl talks to people: one-line failures, and gRPC errors explained field by field."""

from __future__ import annotations

import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from plumbing import config


def fail(message: str) -> int:
    print(f"refctl: {message}", file=sys.stderr)
    return 1


def explain_rpc_error(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    lines = [f"{error.code().name}: {error.details()}"]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                lines = [f"{error.code().name}: the request was rejected:"]
                lines += [
                    f"  - {v.field or '(request)'}: {v.description}"
                    for v in bad_request.field_violations
                ]
    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
        lines.append(
            "  set CTROUTE_INTAKE_TLS_DIR (the folder with the intake's ca.pem) and "
            "CTROUTE_INTAKE_KEY (your system's <system id>.key)"
        )
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        lines.append(
            f"  is the referral service running at {config.grpc_address()}? "
            "(start it with `make run`, or set REFERRAL_GRPC_ADDR)"
        )
        lines.append(
            "  under `make run` the APIs speak TLS: set their TLS folder and your key "
            "(README.md, Security)"
        )
    return "\n".join(lines)
