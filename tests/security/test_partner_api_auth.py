"""The partner status API over TLS with per-partner signed tokens: a partner reports only as
itself and only on its own deliveries. The tracker runs in process; no broker is needed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import lifecycle_pb2
from devstack.tls import ApiCredentials, ensure_api_credentials
from plumbing.grpc_auth import ServerTls, TokenAuthenticator, authenticated_channel
from plumbing.grpc_server import start_grpc_server
from plumbing.tokens import (
    INTAKE_AUDIENCE,
    PARTNER_API_AUDIENCE,
    TokenVerifier,
    issue_token,
    load_public_keys,
    new_signing_key,
)
from referral.adapters.delivery_store import DeliveryStore
from referral.entrypoints.partner_api import PartnerStatusApi
from referral.tracker import LifecycleTracker

PARTNERS = ("hsi", "cbp")
TIMEOUT_S = 30.0


@dataclass
class PartnerApi:
    address: str
    credentials: ApiCredentials
    tracker: LifecycleTracker
    published: list[Message]

    def stub(self, token: str | None) -> delivery_pb2_grpc.PartnerStatusServiceStub:
        channel = authenticated_channel(self.address, self.credentials.ca_pem, token)
        return delivery_pb2_grpc.PartnerStatusServiceStub(channel)

    def token(self, partner: str) -> str:
        return self.credentials.token(partner, PARTNER_API_AUDIENCE)

    def delivered_to(self, partner: str) -> str:
        event = lifecycle_pb2.ReferralDelivered(
            referral_id=f"ref-{uuid.uuid4().hex[:20]}",
            delivery_id=f"dlv-{uuid.uuid4().hex}",
            partner=partner,
            priority=lifecycle_pb2.PRIORITY_HIGH,
        )
        event.acknowledge_by.FromDatetime(datetime.now(UTC) + timedelta(hours=4))
        self.tracker.delivered(event)
        return event.delivery_id


@pytest.fixture
def partner_api(tmp_path: Path) -> Iterator[PartnerApi]:
    credentials = ensure_api_credentials(tmp_path / "partner-api", PARTNERS)
    store = DeliveryStore(tmp_path / "lifecycle.sqlite3")
    published: list[Message] = []
    tracker = LifecycleTracker(store, lambda _topic, _key, event, _id: published.append(event))
    verifier = TokenVerifier(
        load_public_keys(credentials.trusted_keys), audience=PARTNER_API_AUDIENCE
    )
    api = PartnerStatusApi(tracker, TokenAuthenticator(verifier))

    def register(server: grpc.Server) -> list[str]:
        delivery_pb2_grpc.add_PartnerStatusServiceServicer_to_server(api, server)
        return [delivery_pb2.DESCRIPTOR.services_by_name["PartnerStatusService"].full_name]

    server = start_grpc_server(
        "127.0.0.1:0", register, credentials=ServerTls.from_dir(credentials.folder).credentials()
    )
    try:
        yield PartnerApi(f"127.0.0.1:{server.port}", credentials, tracker, published)
    finally:
        server.stop(grace=1)
        store.close()


def _ack(delivery_id: str, partner: str) -> delivery_pb2.ReportDeliveryStatusRequest:
    return delivery_pb2.ReportDeliveryStatusRequest(
        delivery_id=delivery_id,
        partner=partner,
        state=lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED,
    )


def _code(stub: delivery_pb2_grpc.PartnerStatusServiceStub, request: Message) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ReportDeliveryStatus(request, timeout=TIMEOUT_S)
    code: grpc.StatusCode = raised.value.code()
    return code


def test_a_partner_reports_on_its_own_delivery(partner_api: PartnerApi) -> None:
    delivery_id = partner_api.delivered_to("hsi")

    response = partner_api.stub(partner_api.token("hsi")).ReportDeliveryStatus(
        _ack(delivery_id, "hsi"), timeout=TIMEOUT_S
    )

    assert response.state == lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED


def test_a_partner_cannot_report_as_another_or_on_anothers_delivery(
    partner_api: PartnerApi,
) -> None:
    theirs = partner_api.delivered_to("cbp")
    stub = partner_api.stub(partner_api.token("hsi"))

    assert _code(stub, _ack(theirs, "cbp")) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(stub, _ack(theirs, "hsi")) == grpc.StatusCode.PERMISSION_DENIED
    assert not any(
        isinstance(event, lifecycle_pb2.DeliveryStatusChanged) for event in partner_api.published
    )


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="no token"),
        pytest.param(
            issue_token("hsi", new_signing_key(), audience=PARTNER_API_AUDIENCE), id="wrong key"
        ),
        pytest.param("intake", id="a token for the intake"),
    ],
)
def test_a_call_without_valid_partner_credentials_is_unauthenticated(
    partner_api: PartnerApi, token: str | None
) -> None:
    delivery_id = partner_api.delivered_to("hsi")
    if token == "intake":
        token = partner_api.credentials.token("hsi", INTAKE_AUDIENCE)

    code = _code(partner_api.stub(token), _ack(delivery_id, "hsi"))

    assert code == grpc.StatusCode.UNAUTHENTICATED
