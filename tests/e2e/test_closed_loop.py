"""Partners report progress on their own deliveries; the lifecycle is enforced and every change
or refusal is recorded on the lifecycle topic."""

from __future__ import annotations

import subprocess
import sys
import uuid

import grpc
import pytest

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2, referral_pb2
from plumbing import topics
from tests.e2e.system import RunningSystem
from tests.kafka_reading import LandedRecord, read_until

pytestmark = pytest.mark.broker

S = lifecycle_pb2


def _goods_referral() -> intake_pb2.SubmitReferralRequest:
    request = intake_pb2.SubmitReferralRequest()
    request.referral.source = "cbp-eallegations"
    request.referral.source_reference = f"loop-{uuid.uuid4().hex[:12]}"
    request.referral.indicators.append(referral_pb2.INDICATOR_FORCED_LABOR_IN_GOODS)
    request.referral.goods.add(product="gloves", producer="Loop Works", destined_for_us=True)
    return request


def _status_events(system: RunningSystem, referral_id: str, count: int) -> list[LandedRecord]:
    def relevant(record: LandedRecord) -> bool:
        return record.key == referral_id and isinstance(
            record.event, S.DeliveryStatusChanged | S.DeliveryStatusRejected
        )

    return read_until(
        system.bootstrap_servers,
        [topics.LIFECYCLE],
        keep=relevant,
        want=lambda kept: len(kept) >= count,
    )


def _refctl(system: RunningSystem, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refctl", *args, "--address", system.partner_grpc_address],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_delivery_travels_to_completed_and_illegal_reports_are_refused(
    running_system: RunningSystem,
) -> None:
    referral_id = running_system.intake().SubmitReferral(_goods_referral(), timeout=15).referral_id
    (delivery,) = read_until(
        running_system.bootstrap_servers,
        [topics.inbox("cbp")],
        keep=lambda r: r.key == referral_id,
        want=bool,
    )
    delivery_id = delivery.event.delivery_id  # type: ignore[attr-defined]
    # The enforcement service acknowledges on its own; the tracker records the change.
    (acknowledged,) = _status_events(running_system, referral_id, 1)
    assert acknowledged.event.state == S.DELIVERY_STATE_ACKNOWLEDGED  # type: ignore[attr-defined]
    assert acknowledged.event.previous_state == S.DELIVERY_STATE_DELIVERED  # type: ignore[attr-defined]

    for state in ("ACCEPTED", "IN_PROGRESS"):
        result = _refctl(running_system, "status", delivery_id, state, "--partner", "cbp")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{delivery_id}: {state}"

    incomplete = _refctl(running_system, "status", delivery_id, "COMPLETED", "--partner", "cbp")
    assert incomplete.returncode == 1
    assert "INVALID_ARGUMENT" in incomplete.stderr
    assert "COMPLETED status needs an outcome" in incomplete.stderr

    done = _refctl(
        running_system,
        "status",
        delivery_id,
        "COMPLETED",
        "--partner",
        "cbp",
        "--outcome",
        "GOODS_DETAINED",
    )
    assert done.returncode == 0, done.stderr

    backwards = _refctl(running_system, "status", delivery_id, "ACCEPTED", "--partner", "cbp")
    assert backwards.returncode == 1
    assert "FAILED_PRECONDITION" in backwards.stderr
    assert "cannot move a delivery from COMPLETED to ACCEPTED" in backwards.stderr

    stub = delivery_pb2_grpc.PartnerStatusServiceStub(
        grpc.insecure_channel(running_system.partner_grpc_address)
    )
    with pytest.raises(grpc.RpcError) as not_theirs:
        stub.ReportDeliveryStatus(
            delivery_pb2.ReportDeliveryStatusRequest(
                delivery_id=delivery_id, partner="hsi", state=S.DELIVERY_STATE_ACKNOWLEDGED
            ),
            timeout=15,
        )
    assert not_theirs.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as unknown:
        stub.ReportDeliveryStatus(
            delivery_pb2.ReportDeliveryStatusRequest(
                delivery_id="dlv-does-not-exist", partner="cbp", state=S.DELIVERY_STATE_ACCEPTED
            ),
            timeout=15,
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    events = _status_events(running_system, referral_id, 6)
    changes = [
        (e.event.previous_state, e.event.state)  # type: ignore[attr-defined]
        for e in events
        if isinstance(e.event, S.DeliveryStatusChanged)
    ]
    assert changes == [
        (S.DELIVERY_STATE_DELIVERED, S.DELIVERY_STATE_ACKNOWLEDGED),
        (S.DELIVERY_STATE_ACKNOWLEDGED, S.DELIVERY_STATE_ACCEPTED),
        (S.DELIVERY_STATE_ACCEPTED, S.DELIVERY_STATE_IN_PROGRESS),
        (S.DELIVERY_STATE_IN_PROGRESS, S.DELIVERY_STATE_COMPLETED),
    ]
    completed = [e.event for e in events if isinstance(e.event, S.DeliveryStatusChanged)][-1]
    assert completed.outcome == S.OUTCOME_GOODS_DETAINED
    refusals = [e.event for e in events if isinstance(e.event, S.DeliveryStatusRejected)]
    assert [(r.reporting_partner, r.attempted_state) for r in refusals] == [
        ("cbp", S.DELIVERY_STATE_ACCEPTED),
        ("hsi", S.DELIVERY_STATE_ACKNOWLEDGED),
    ]
    assert all(r.current_state == S.DELIVERY_STATE_COMPLETED for r in refusals)
