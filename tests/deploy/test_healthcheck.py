"""`python -m plumbing.healthcheck grpc`, the check behind the compose health checks and the
Kubernetes exec probes of every gRPC service, against an in-process server: healthy while it
serves, unhealthy once it stops; over TLS (`--ca`) as the intake and the partner API serve it,
without a token."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc
from devstack.tls import ensure_api_credentials
from plumbing import healthcheck
from plumbing.grpc_auth import ServerTls, TokenAuthenticator
from plumbing.grpc_server import TracingInterceptor, start_grpc_server
from plumbing.tokens import TokenVerifier, load_public_keys
from referral.entrypoints.grpc_intake import ReferralIntake


def test_grpc_check_follows_the_servers_health(capsys: pytest.CaptureFixture[str]) -> None:
    server = start_grpc_server("127.0.0.1:0", lambda _server: [])
    address = f"127.0.0.1:{server.port}"
    try:
        assert healthcheck.main(["grpc", address]) == 0
    finally:
        server.stop(grace=0)
    assert healthcheck.main(["--timeout", "1", "grpc", address]) == 1
    assert capsys.readouterr().err.startswith(f"unhealthy: {address}: ")


def test_grpc_check_speaks_tls_trusting_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Built as the intake and the tracker build theirs (ServerTls.from_dir of the TLS folder).
    credentials = ensure_api_credentials(tmp_path / "intake", hostnames=("intake",))
    server = start_grpc_server(
        "127.0.0.1:0",
        lambda _server: [],
        credentials=ServerTls.from_dir(credentials.folder).credentials(),
    )
    address = f"127.0.0.1:{server.port}"
    ca = str(credentials.folder / "ca.pem")
    try:
        assert healthcheck.main(["--timeout", "3", "grpc", address, "--ca", ca]) == 0
        # A name the certificate carries, other than the address's host.
        assert healthcheck.main(["grpc", address, "--ca", ca, "--server-name", "intake"]) == 0
        capsys.readouterr()
        # A name it does not carry, and a plaintext check of a TLS server, are refused.
        assert (
            healthcheck.main(
                ["--timeout", "1", "grpc", address, "--ca", ca, "--server-name", "tracker"]
            )
            == 1
        )
        assert capsys.readouterr().err.startswith(f"unhealthy: {address}: UNAVAILABLE")
        assert healthcheck.main(["--timeout", "1", "grpc", address]) == 1
        assert capsys.readouterr().err.startswith(f"unhealthy: {address}: ")
    finally:
        server.stop(grace=0)
    assert healthcheck.main(["--timeout", "1", "grpc", address, "--ca", ca]) == 1


def test_the_health_service_of_the_token_checking_intake_needs_no_token(tmp_path: Path) -> None:
    # The intake as intake_main builds it with CTROUTE_INTAKE_TLS_DIR set: tokens are checked by
    # the intake's own methods, so the health service answers a probe that has no key.
    credentials = ensure_api_credentials(tmp_path / "intake")
    verifier = TokenVerifier(load_public_keys(credentials.trusted_keys))
    intake = ReferralIntake(cast(Any, None), cast(Any, None), TokenAuthenticator(verifier))

    def register(server: Any) -> list[str]:
        intake_pb2_grpc.add_ReferralIntakeServiceServicer_to_server(intake, server)
        return [intake_pb2.DESCRIPTOR.services_by_name["ReferralIntakeService"].full_name]

    server = start_grpc_server(
        "127.0.0.1:0",
        register,
        interceptors=[TracingInterceptor()],
        credentials=ServerTls.from_dir(credentials.folder).credentials(),
    )
    try:
        ca = str(credentials.folder / "ca.pem")
        assert healthcheck.main(["grpc", f"127.0.0.1:{server.port}", "--ca", ca]) == 0
    finally:
        server.stop(grace=0)


def test_grpc_check_trusts_only_the_given_ca(tmp_path: Path) -> None:
    served = ensure_api_credentials(tmp_path / "served", systems=())
    other = ensure_api_credentials(tmp_path / "other", systems=())
    server = start_grpc_server(
        "127.0.0.1:0",
        lambda _server: [],
        credentials=ServerTls.from_dir(served.folder).credentials(),
    )
    address = f"127.0.0.1:{server.port}"
    try:
        assert healthcheck.main(["grpc", address, "--ca", str(served.folder / "ca.pem")]) == 0
        assert (
            healthcheck.main(
                ["--timeout", "1", "grpc", address, "--ca", str(other.folder / "ca.pem")]
            )
            == 1
        )
    finally:
        server.stop(grace=0)


def test_grpc_check_reports_a_missing_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "ca.pem"
    assert healthcheck.main(["grpc", "127.0.0.1:1", "--ca", str(missing)]) == 1
    assert capsys.readouterr().err.startswith(f"unhealthy: {missing}: ")


def test_server_name_needs_a_ca() -> None:
    with pytest.raises(SystemExit):
        healthcheck.main(["grpc", "127.0.0.1:1", "--server-name", "intake"])
