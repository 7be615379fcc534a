"""Health checks for containers: `python -m plumbing.healthcheck grpc HOST:PORT [--ca PEM]
[--server-name NAME]` or `python -m plumbing.healthcheck group GROUP`.

Container images carry no grpc_health_probe binary, so compose health checks and Kubernetes
exec probes use this module from the service's own image. Kubernetes `grpc:` probes cannot speak
TLS, so the APIs behind TLS (intake, partner status API) are probed with `grpc ... --ca`: a TLS
channel trusting that authority. It sends no token: the health service is not behind the
token check (tokens are verified by the API's own methods, `plumbing.grpc_auth`).
Exit status 0 means healthy, 1 unhealthy; one line on stderr says why.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from plumbing import config
from plumbing.kafka import security_settings


def _channel(address: str, ca: Path | None, server_name: str | None) -> grpc.Channel:
    if ca is None:
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    options = [] if server_name is None else [("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(address, credentials, options=options)


def grpc_serving(
    address: str, timeout: float, ca: Path | None = None, server_name: str | None = None
) -> str | None:
    """None when the server at `address` reports SERVING for the whole server, else why not.

    Plaintext without `ca`; with it, TLS trusting that authority's PEM file, checking the
    certificate against `server_name` if given (else the host of `address`)."""
    try:
        channel = _channel(address, ca, server_name)
    except OSError as error:
        return f"{ca}: {error.strerror or error}"
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as error:
            return f"{address}: {error.code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def group_assigned(
    bootstrap_servers: str,
    group: str,
    timeout: float,
    *,
    member_client_id: str | None = None,
    client_settings: dict[str, Any] | None = None,
) -> str | None:
    """None when consumer group `group` is stable with partitions assigned (to the member with
    `member_client_id`, when given), else why not. `client_settings` are the admin client's
    security settings; this process's own by default."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=int(timeout * 1000),
            **(security_settings() if client_settings is None else client_settings),
        )
    except KafkaError as error:
        return f"{bootstrap_servers}: {type(error).__name__}"
    try:
        description = admin.describe_groups([group]).get(group) or {}
    except KafkaError as error:
        return f"group {group}: {type(error).__name__}"
    finally:
        admin.close()
    state = description.get("group_state")
    if state != "Stable":
        return f"group {group} is {state or 'unknown'}"
    if not any(
        (member.get("member_assignment") or {}).get("assigned_partitions")
        for member in description.get("members", [])
        if member_client_id is None or member.get("client_id") == member_client_id
    ):
        whose = f" to {member_client_id}" if member_client_id else ""
        return f"group {group} has no partitions assigned{whose}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plumbing.healthcheck", description="Exit 0 when healthy, 1 when not."
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    checks = parser.add_subparsers(dest="check", required=True)
    grpc_check = checks.add_parser("grpc", help="the gRPC health service answers SERVING")
    grpc_check.add_argument("address", help="HOST:PORT of the gRPC server")
    grpc_check.add_argument(
        "--ca", type=Path, help="speak TLS, trusting this authority's certificate (PEM)"
    )
    grpc_check.add_argument(
        "--server-name",
        help="with --ca: the name the server's certificate must carry, when not the address's "
        "host (e.g. a certificate not issued for 127.0.0.1)",
    )
    group_check = checks.add_parser(
        "group", help="a consumer group is stable with partitions assigned"
    )
    group_check.add_argument("group", help="consumer group id, e.g. referral-router")
    args = parser.parse_args(argv)
    if args.check == "grpc":
        if args.server_name is not None and args.ca is None:
            parser.error("--server-name needs --ca")
        problem = grpc_serving(args.address, args.timeout, args.ca, args.server_name)
    else:
        problem = group_assigned(config.kafka_bootstrap_servers(), args.group, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
