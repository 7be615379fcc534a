"""Operators trace a referral: the timeline service follows the topics into the trace store,
`refctl trace` draws the referral's path as a tree with the trace id its records carry, `refctl
referrals` and the gRPC query API list it, and the store survives a restart and a rebuild."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from kafka import KafkaConsumer, TopicPartition

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2, query_pb2, query_pb2_grpc, referral_pb2
from plumbing import topics
from plumbing.envelope import header_value
from plumbing.telemetry import trace_id_of_headers
from tests.e2e.system import RunningSystem
from tests.kafka_reading import read_until

pytestmark = pytest.mark.broker

S = lifecycle_pb2
TIMELINE = "referral-timeline"
DEADLINE_S = 60.0


PATH_TYPES = {
    S.ReferralSubmitted.DESCRIPTOR.full_name,
    S.ReferralRouted.DESCRIPTOR.full_name,
    S.ReferralDelivered.DESCRIPTOR.full_name,
}


def _path_headers(bootstrap: str, referral_id: str) -> dict[str, list[tuple[str, bytes]]]:
    """The headers of the referral's submitted, routed and delivered records, by event type.

    Read raw, keyed by the referral: other tests put undecodable records on these topics on
    purpose, and nothing here needs a record's value.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in (topics.SUBMITTED, topics.LIFECYCLE)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found: dict[str, list[tuple[str, bytes]]] = {}
        deadline = time.monotonic() + DEADLINE_S
        while set(found) != PATH_TYPES:
            assert time.monotonic() < deadline, f"only {sorted(found)} found for {referral_id}"
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    if record.key != referral_id.encode():
                        continue
                    headers = list(record.headers or [])
                    event_type = header_value(headers, "ce_type")
                    if event_type in PATH_TYPES:
                        found[event_type] = headers
        return found
    finally:
        consumer.close()


def _goods_referral() -> intake_pb2.SubmitReferralRequest:
    request = intake_pb2.SubmitReferralRequest()
    request.referral.source = "cbp-eallegations"
    request.referral.source_reference = f"trace-{uuid.uuid4().hex[:12]}"
    request.referral.indicators.append(referral_pb2.INDICATOR_FORCED_LABOR_IN_GOODS)
    request.referral.goods.add(product="gloves", producer="Trace Works", destined_for_us=True)
    return request


def _eventually(
    fetch: Callable[[], query_pb2.GetReferralResponse],
    until: Callable[[query_pb2.GetReferralResponse], bool],
    what: str,
) -> query_pb2.GetReferralResponse:
    """Ask until the answer satisfies `until`; fail with the last answer at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    last: object = None
    while time.monotonic() < deadline:
        try:
            answer = fetch()
        except grpc.RpcError as error:
            last = error.code()
        else:
            if until(answer):
                return answer
            last = answer
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last answer: {last}")


def _refctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refctl", *args], capture_output=True, text=True, timeout=60
    )


def _cbp_states(response: query_pb2.GetReferralResponse) -> list[int]:
    return [d.state for d in response.summary.deliveries if d.partner == "cbp"]


@pytest.fixture
def timeline_restored(running_system: RunningSystem) -> Iterator[None]:
    """Whatever the test does to the timeline service, it is running again afterwards."""
    yield
    if TIMELINE not in running_system.stack.running:
        running_system.stack.restart(TIMELINE)


def test_a_referral_is_traced_listed_and_kept_across_a_restart_and_a_rebuild(
    running_system: RunningSystem, timeline_restored: None
) -> None:
    bootstrap = running_system.bootstrap_servers
    referral_id = running_system.intake().SubmitReferral(_goods_referral(), timeout=15).referral_id
    (delivery,) = read_until(
        bootstrap, [topics.inbox("cbp")], keep=lambda r: r.key == referral_id, want=bool
    )
    delivery_id = delivery.event.delivery_id  # type: ignore[attr-defined]

    query = query_pb2_grpc.ReferralQueryServiceStub(
        grpc.insecure_channel(running_system.query_grpc_address)
    )

    def get() -> query_pb2.GetReferralResponse:
        return query.GetReferral(query_pb2.GetReferralRequest(referral_id=referral_id), timeout=5)

    # The enforcement service acknowledges on its own; CBP then accepts and completes.
    _eventually(
        get,
        lambda answer: _cbp_states(answer) == [S.DELIVERY_STATE_ACKNOWLEDGED],
        "the acknowledgement in the trace store",
    )
    partner_api = delivery_pb2_grpc.PartnerStatusServiceStub(
        grpc.insecure_channel(running_system.partner_grpc_address)
    )
    for state, outcome in (
        (S.DELIVERY_STATE_ACCEPTED, S.OUTCOME_UNSPECIFIED),
        (S.DELIVERY_STATE_COMPLETED, S.OUTCOME_GOODS_DETAINED),
    ):
        partner_api.ReportDeliveryStatus(
            delivery_pb2.ReportDeliveryStatusRequest(
                delivery_id=delivery_id, partner="cbp", state=state, outcome=outcome
            ),
            timeout=15,
        )

    # The trace id every record of the referral's path carries.
    path = _path_headers(bootstrap, referral_id)
    (trace_id,) = {trace_id_of_headers(headers) for headers in path.values()}

    def complete(response: query_pb2.GetReferralResponse) -> bool:
        reported = [e for e in response.timeline if e.event_type.endswith("StatusReported")]
        return _cbp_states(response) == [S.DELIVERY_STATE_COMPLETED] and bool(reported)

    traced = _eventually(get, complete, "the completed delivery in the trace store")
    summary = traced.summary
    assert summary.referral_id == referral_id
    assert summary.source == "cbp-eallegations"
    assert summary.trace_id == trace_id
    assert summary.received_at.ToSeconds() > 0
    (cbp,) = [d for d in summary.deliveries if d.partner == "cbp"]
    assert cbp.delivery_id == delivery_id
    assert not cbp.overdue
    assert cbp.acknowledge_by.ToSeconds() > summary.received_at.ToSeconds()

    cbp_chain = [
        (e.event_type.rsplit(".", 1)[-1], e.state)
        for e in traced.timeline
        if e.partner == "cbp" and not e.event_type.endswith("StatusReported")
    ]
    assert cbp_chain == [
        ("ReferralDelivered", S.DELIVERY_STATE_DELIVERED),
        ("DeliveryStatusChanged", S.DELIVERY_STATE_ACKNOWLEDGED),
        ("DeliveryStatusChanged", S.DELIVERY_STATE_ACCEPTED),
        ("DeliveryStatusChanged", S.DELIVERY_STATE_COMPLETED),
    ]
    kinds = [e.event_type.rsplit(".", 1)[-1] for e in traced.timeline]
    assert kinds[:2] == ["ReferralSubmitted", "ReferralRouted"]
    times = [e.occurred_at.ToNanoseconds() for e in traced.timeline]
    assert times == sorted(times)
    (routed,) = [e for e in traced.timeline if e.event_type.endswith("ReferralRouted")]
    assert "policy " in routed.detail
    assert "cbp (HIGH" in routed.detail

    # refctl trace: the tree, each hop with its time and latency, and the trace id.
    tree = _refctl("trace", referral_id, "--address", running_system.query_grpc_address)
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    assert lines[0].startswith(f"{referral_id}  from cbp-eallegations  priority HIGH")
    assert "OVERDUE" not in tree.stdout
    assert f"trace {trace_id}" in lines[1]
    (routed_line,) = [line for line in lines if "  routed  " in line]
    assert "rules R" in routed_line
    assert "policy " in routed_line
    (branch,) = [line for line in lines if f"cbp  COMPLETED  delivery {delivery_id}" in line]
    assert lines.index(branch) > lines.index(routed_line)
    hops = [line for line in lines[lines.index(branch) + 1 :] if "Z  " in line]
    assert [hop.split("Z  ", 1)[1].split()[0] for hop in hops] == [
        "DELIVERED",
        "reported",
        "ACKNOWLEDGED",
        "ACCEPTED",
        "COMPLETED",
    ]
    assert all(" +" in hop for hop in hops), "every hop shows its latency"
    assert all(hop.lstrip("│ ").startswith(("├── ", "└── ")) for hop in hops)

    as_json = _refctl(
        "trace", referral_id, "--json", "--address", running_system.query_grpc_address
    )
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["summary"]["trace_id"] == trace_id
    assert document["timeline"][0]["latency_ms"] is None
    assert all(entry["latency_ms"] >= 0 for entry in document["timeline"][1:])

    # refctl referrals and ListReferrals list it.
    listed = _refctl(
        "referrals",
        "--partner",
        "cbp",
        "--state",
        "COMPLETED",
        "--address",
        running_system.query_grpc_address,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "REFERRAL",
        "RECEIVED",
        "SOURCE",
        "PRIORITY",
        "DELIVERIES",
    ]
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(referral_id)]
    assert "cbp-eallegations" in row
    assert "HIGH" in row
    assert "cbp COMPLETED" in row
    overdue = _refctl("referrals", "--overdue", "--address", running_system.query_grpc_address)
    assert overdue.returncode == 0, overdue.stderr
    assert referral_id not in overdue.stdout

    page = query.ListReferrals(
        query_pb2.ListReferralsRequest(
            partner="cbp", state=S.DELIVERY_STATE_COMPLETED, page_size=1000
        ),
        timeout=5,
    )
    (found,) = [s for s in page.referrals if s.referral_id == referral_id]
    assert found == summary
    assert all(
        any(d.partner == "cbp" and d.state == S.DELIVERY_STATE_COMPLETED for d in s.deliveries)
        for s in page.referrals
    )
    missing = _refctl("trace", "ref-does-not-exist", "--address", running_system.query_grpc_address)
    assert missing.returncode == 1
    assert "no referral ref-does-not-exist in the trace store" in missing.stderr

    # A rebuild beside the running service: the store is dropped and refilled from the topics
    # (the service's own records stay what they were), and the timeline comes back the same.
    rebuilt = subprocess.run(
        [sys.executable, "-m", "referral", "timeline", "--rebuild"],
        env=running_system.stack.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    said = re.fullmatch(
        r"rebuilt the trace store \(SQLite trace-store\.sqlite3\) from (\d+) records: "
        r"(\d+) events of (\d+) referrals\n",
        rebuilt.stdout,
    )
    assert said, rebuilt.stdout
    assert int(said[1]) >= int(said[2]) >= len(traced.timeline)
    assert _eventually(get, lambda answer: answer == traced, "the rebuilt timeline") == traced

    # A crash and a restart: the store is durable. (`restart` may return while the group still
    # shows the killed member, before the new process serves: ask until it answers.)
    running_system.stack.kill(TIMELINE)
    running_system.stack.restart(TIMELINE)
    assert _eventually(get, bool, "the restarted timeline service") == traced
