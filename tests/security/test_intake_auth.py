"""The intake over TLS with per-system signed tokens: only a registered system gets in, and only
as itself. Publishes to the authenticated broker as `svc-intake`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc, lifecycle_pb2
from devstack.tls import ApiCredentials, ensure_api_credentials
from plumbing import topics
from plumbing.grpc_auth import ServerTls, TokenAuthenticator, authenticated_channel
from plumbing.grpc_server import TracingInterceptor, start_grpc_server
from plumbing.kafka import EventPublisher
from plumbing.tokens import (
    TokenVerifier,
    issue_token,
    load_public_keys,
    load_signing_key,
    new_signing_key,
)
from referral.adapters.ledger import IntakeLedger
from referral.entrypoints.grpc_intake import ReferralIntake
from tests.conftest import PROJECT_ROOT
from tests.kafka_reading import read_until
from tests.security.conftest import SecureKafka

SYSTEMS = ("hsi-tipline", "nht-hotline")
DEMO = PROJECT_ROOT / "deploy" / "demo" / "01-baltimore-sex-trafficking.json"
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SecureIntake:
    address: str
    credentials: ApiCredentials

    def stub(self, token: str | None) -> intake_pb2_grpc.ReferralIntakeServiceStub:
        channel = authenticated_channel(self.address, self.credentials.ca_pem, token)
        return intake_pb2_grpc.ReferralIntakeServiceStub(channel)


@pytest.fixture(scope="module")
def secure_intake(
    secure_kafka: SecureKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureIntake]:
    credentials = ensure_api_credentials(tmp_path_factory.mktemp("intake-tls"), SYSTEMS)
    with pytest.MonkeyPatch.context() as env:
        for key, value in secure_kafka.services["svc-intake"].env().items():
            env.setenv(key, value)
        publisher = EventPublisher(secure_kafka.bootstrap, source="referral/intake")
    ledger = IntakeLedger(tmp_path_factory.mktemp("ledger") / "intake-ledger.sqlite3")
    authenticator = TokenAuthenticator(TokenVerifier(load_public_keys(credentials.trusted_keys)))
    intake = ReferralIntake(publisher, ledger, authenticator)

    def register(server: grpc.Server) -> list[str]:
        intake_pb2_grpc.add_ReferralIntakeServiceServicer_to_server(intake, server)
        return [intake_pb2.DESCRIPTOR.services_by_name["ReferralIntakeService"].full_name]

    server = start_grpc_server(
        "127.0.0.1:0",
        register,
        interceptors=[TracingInterceptor()],
        credentials=ServerTls.from_dir(credentials.folder).credentials(),
    )
    try:
        yield SecureIntake(f"127.0.0.1:{server.port}", credentials)
    finally:
        server.stop(grace=1)
        publisher.close()
        ledger.close()


def _request(source: str) -> intake_pb2.SubmitReferralRequest:
    request = json_format.Parse(DEMO.read_text(), intake_pb2.SubmitReferralRequest())
    request.referral.source = source
    request.referral.source_reference = f"sec-{uuid.uuid4().hex}"
    return request


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    code: grpc.StatusCode = raised.value.code()
    return code


@pytest.mark.broker
def test_a_registered_system_submits_as_itself(
    secure_intake: SecureIntake, secure_kafka: SecureKafka
) -> None:
    stub = secure_intake.stub(secure_intake.credentials.token("hsi-tipline"))

    response = stub.SubmitReferral(_request("hsi-tipline"), timeout=TIMEOUT_S)

    landed = read_until(
        secure_kafka.bootstrap,
        [topics.SUBMITTED],
        want=lambda kept: bool(kept),
        keep=lambda record: record.key == response.referral_id,
        security=secure_kafka.admin_settings,
    )
    assert isinstance(landed[0].event, lifecycle_pb2.ReferralSubmitted)
    assert landed[0].event.submitted_by == "hsi-tipline"


@pytest.mark.broker
def test_a_system_cannot_submit_or_withdraw_as_another(secure_intake: SecureIntake) -> None:
    stub = secure_intake.stub(secure_intake.credentials.token("hsi-tipline"))
    theirs = secure_intake.stub(secure_intake.credentials.token("nht-hotline"))
    submitted = theirs.SubmitReferral(_request("nht-hotline"), timeout=TIMEOUT_S)
    withdraw = intake_pb2.WithdrawReferralRequest(
        referral_id=submitted.referral_id, source="nht-hotline", reason="spoofed"
    )

    assert (
        _code(lambda: stub.SubmitReferral(_request("nht-hotline"), timeout=TIMEOUT_S))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        _code(lambda: stub.WithdrawReferral(withdraw, timeout=TIMEOUT_S))
        == grpc.StatusCode.PERMISSION_DENIED
    )


def _forged_token(system: str) -> str:
    """A well-formed token for a registered system, signed with a key that is not its own."""
    return issue_token(system, new_signing_key())


@pytest.mark.broker
@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="no token"),
        pytest.param("not-a-token", id="garbage"),
        pytest.param(_forged_token("hsi-tipline"), id="wrong key"),
        pytest.param(_forged_token("cbp-eallegations"), id="unregistered system"),
    ],
)
def test_a_call_without_valid_credentials_is_unauthenticated(
    secure_intake: SecureIntake, token: str | None
) -> None:
    stub = secure_intake.stub(token)

    code = _code(lambda: stub.SubmitReferral(_request("hsi-tipline"), timeout=TIMEOUT_S))

    assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.broker
def test_an_expired_token_is_unauthenticated(secure_intake: SecureIntake) -> None:
    key = load_signing_key(secure_intake.credentials.key_path("hsi-tipline"))
    stub = secure_intake.stub(issue_token("hsi-tipline", key, now=0))

    code = _code(lambda: stub.SubmitReferral(_request("hsi-tipline"), timeout=TIMEOUT_S))

    assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.broker
def test_the_intake_speaks_only_tls_with_its_own_certificate(
    secure_intake: SecureIntake, tmp_path: Path
) -> None:
    other_ca = ensure_api_credentials(tmp_path / "other", ()).ca_pem
    token = secure_intake.credentials.token("hsi-tipline")
    plaintext = intake_pb2_grpc.ReferralIntakeServiceStub(
        grpc.insecure_channel(secure_intake.address)
    )
    untrusted = intake_pb2_grpc.ReferralIntakeServiceStub(
        authenticated_channel(secure_intake.address, other_ca, token)
    )

    for stub in (plaintext, untrusted):
        code = _code(lambda stub=stub: stub.SubmitReferral(_request("hsi-tipline"), timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE
