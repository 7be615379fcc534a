"""`python -m plumbing.healthcheck grpc`, the check behind the compose health checks of every
gRPC service, against an in-process server: healthy while it serves, unhealthy once it stops."""

from __future__ import annotations

import pytest

from plumbing import healthcheck
from plumbing.grpc_server import start_grpc_server


def test_grpc_check_follows_the_servers_health(capsys: pytest.CaptureFixture[str]) -> None:
    server = start_grpc_server("127.0.0.1:0", lambda _server: [])
    address = f"127.0.0.1:{server.port}"
    try:
        assert healthcheck.main(["grpc", address]) == 0
    finally:
        server.stop(grace=0)
    assert healthcheck.main(["--timeout", "1", "grpc", address]) == 1
    assert capsys.readouterr().err.startswith(f"unhealthy: {address}: ")
