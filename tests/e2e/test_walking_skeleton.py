"""One referral travels the whole way on the real broker: gRPC intake, faust router, partner
inboxes, downstream services, acknowledgements, and a single trace across all of it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from google.protobuf import json_format

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2
from plumbing import topics
from tests.e2e.system import RunningSystem
from tests.kafka_reading import LandedRecord, read_all, read_until

pytestmark = pytest.mark.broker

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"
ALL_INBOXES = [
    topics.inbox(p)
    for p in ("hsi", "hsi-vap", "ccht", "cbp", "uscg", "uscis", "ngo-mid-atlantic", "ngo-southeast")
]


def demo_request(name: str) -> intake_pb2.SubmitReferralRequest:
    request = json_format.Parse((DEMO / name).read_text(), intake_pb2.SubmitReferralRequest())
    request.referral.source_reference = f"e2e-{uuid.uuid4().hex[:12]}"
    return request


def spans_of_trace(trace_dir: Path, trace_id: str) -> list[dict[str, object]]:
    spans = []
    for path in trace_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            if span["context"]["trace_id"] == f"0x{trace_id}":
                spans.append(span)
    return spans


def test_a_referral_reaches_its_partners_and_comes_back_acknowledged_in_one_trace(
    running_system: RunningSystem,
) -> None:
    response = running_system.intake().SubmitReferral(
        demo_request("01-baltimore-sex-trafficking.json"), timeout=15
    )
    referral_id = response.referral_id
    assert referral_id.startswith("ref-")
    expected = {"hsi", "hsi-vap", "ccht"}  # R1 and R2 (a minor) and R7 (victims identified)

    def mine(record: LandedRecord) -> bool:
        return record.key == referral_id

    deliveries = read_until(
        running_system.bootstrap_servers,
        ALL_INBOXES,
        keep=mine,
        want=lambda kept: {r.event.partner for r in kept} >= expected,  # type: ignore[attr-defined]
    )
    by_partner = {r.event.partner: r for r in deliveries}  # type: ignore[attr-defined]
    assert set(by_partner) == expected
    assert all(isinstance(r.event, delivery_pb2.PartnerDelivery) for r in deliveries)
    for partner, record in by_partner.items():
        assert record.topic == topics.inbox(partner)
        assert record.event.priority == lifecycle_pb2.PRIORITY_URGENT  # type: ignore[attr-defined]

    delivery_ids = {r.event.delivery_id for r in deliveries}  # type: ignore[attr-defined]
    acks = read_until(
        running_system.bootstrap_servers,
        [topics.status(p) for p in expected],
        keep=mine,
        want=lambda kept: {r.event.report.delivery_id for r in kept} >= delivery_ids,  # type: ignore[attr-defined]
    )
    for ack in acks:
        report = ack.event.report  # type: ignore[attr-defined]
        # Every partner acknowledges; the Victim Assistance Program also accepts at once (a
        # victim specialist is assigned immediately).
        assert report.state == lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED or (
            report.partner == "hsi-vap" and report.state == lifecycle_pb2.DELIVERY_STATE_ACCEPTED
        )
        assert ack.topic == topics.status(report.partner)

    submitted = read_until(
        running_system.bootstrap_servers, [topics.SUBMITTED], keep=mine, want=bool
    )
    lifecycle = read_until(
        running_system.bootstrap_servers,
        [topics.LIFECYCLE],
        keep=mine,
        want=lambda kept: (
            any(isinstance(r.event, lifecycle_pb2.ReferralRouted) for r in kept)
            and sum(isinstance(r.event, lifecycle_pb2.ReferralDelivered) for r in kept) == 3
        ),
    )
    every_record = submitted + deliveries + acks + lifecycle
    trace_ids = {record.trace_id for record in every_record}
    assert len(trace_ids) == 1, f"records of one referral span several traces: {trace_ids}"
    (trace_id,) = trace_ids
    assert len(trace_id) == 32
    assert int(trace_id, 16) != 0

    # The exported spans tell the same story: one trace through every service.
    wanted_services = {"referral", "referral-router", "enforcement", "victim-services"}
    deadline = time.monotonic() + 20
    while True:
        spans = spans_of_trace(running_system.trace_dir, trace_id)
        services = {span["resource"]["attributes"]["service.name"] for span in spans}  # type: ignore[index]
        if services >= wanted_services or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert services >= wanted_services
    names = {span["name"] for span in spans}
    assert "ctroute.referral.v1.ReferralIntakeService/SubmitReferral" in names
    assert f"{topics.SUBMITTED} process" in names
    assert f"{topics.inbox('hsi')} process" in names


def test_the_same_source_reference_twice_yields_one_referral(
    running_system: RunningSystem,
) -> None:
    request = demo_request("03-forced-labor-goods.json")
    first = running_system.intake().SubmitReferral(request, timeout=15)
    second = running_system.intake().SubmitReferral(request, timeout=15)
    assert not first.duplicate
    assert second.duplicate
    assert second.referral_id == first.referral_id
    submitted = read_all(
        running_system.bootstrap_servers,
        [topics.SUBMITTED],
        keep=lambda r: r.key == first.referral_id,
    )
    assert len(submitted) == 1
    deliveries = read_until(
        running_system.bootstrap_servers,
        [topics.inbox("cbp")],
        keep=lambda r: r.key == first.referral_id,
        want=bool,
    )
    assert [r.event.partner for r in deliveries] == ["cbp"]  # type: ignore[attr-defined]


def _refctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refctl", *args], capture_output=True, text=True, timeout=60
    )


def test_refctl_submits_a_json_file_and_tails_a_partner_inbox(
    running_system: RunningSystem, tmp_path: Path
) -> None:
    request = demo_request("04-coast-guard-boarding.json")
    path = tmp_path / "boarding.json"
    path.write_text(json_format.MessageToJson(request))
    submitted = _refctl("submit", str(path), "--address", running_system.grpc_address)
    assert submitted.returncode == 0, submitted.stderr
    referral_id = submitted.stdout.strip()
    assert referral_id.startswith("ref-")

    read_until(
        running_system.bootstrap_servers,
        [topics.inbox("uscg")],
        keep=lambda r: r.key == referral_id,
        want=bool,
    )
    tailed = _refctl(
        "tail",
        "uscg",
        "--from-beginning",
        "--timeout",
        # Idle seconds before tail exits: generous, as its first fetch can be slow on a busy box.
        "5",
        "--bootstrap-servers",
        running_system.bootstrap_servers,
    )
    assert tailed.returncode == 0, tailed.stderr
    ours = [line for line in tailed.stdout.splitlines() if referral_id in line]
    assert len(ours) == 1
    assert "uscg" in ours[0]
    assert "HIGH" in ours[0]
    assert "rules=R5" in ours[0]


def test_refctl_explains_a_rejected_submission_field_by_field(
    running_system: RunningSystem, tmp_path: Path
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"referral": {"source": "hsi-tipline", "victims": [{"age": 130}]}}))
    result = _refctl("submit", str(path), "--address", running_system.grpc_address)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "referral.source_reference" in result.stderr
    assert "referral.victims[0].age" in result.stderr
