"""`refctl policy simulate --from-topic` replays what was really submitted, on the real broker.

Three ReferralSubmitted events are published to the submitted topic as the intake publishes them
(protobuf value, CloudEvents headers, referral id key, acknowledged by the broker before the run
starts). The simulation reads the topic from the beginning to its end at the start, without a
consumer group; other tests' referrals may be there too, so the test asserts on its own three:
all evaluated, and exactly the smuggling-only one routed differently under a candidate policy
that sends R10 to the CCHT desk.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from google.protobuf import json_format

from ctroute.referral.v1 import lifecycle_pb2
from ctroute.referral.v1 import referral_pb2 as R
from devstack.broker import EmbeddedKafka
from plumbing import topics
from plumbing.kafka import EventPublisher
from refctl.__main__ import main
from referral.domain.policy import default_policy_path

pytestmark = pytest.mark.broker

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"
DEADLINE_S = 30.0
AT = "2027-01-01T00:00:00Z"


def demo_referral(name: str, referral_id: str) -> R.Referral:
    """A demo referral as the intake publishes it: with its id and time of receipt."""
    request = json.loads((DEMO / name).read_text(encoding="utf-8"))
    referral = json_format.ParseDict(request["referral"], R.Referral())
    referral.referral_id = referral_id
    referral.source_reference += f"-{referral_id}"
    referral.received_at.GetCurrentTime()
    return referral


def test_simulate_from_topic_evaluates_what_was_submitted(
    kafka_broker: EmbeddedKafka,
    kafka_bootstrap: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kafka_broker.create_topics([(topics.SUBMITTED, topics.PARTITIONS)])
    tag = uuid.uuid4().hex[:10]
    referrals = [
        demo_referral("06-smuggling-only.json", f"ref-sim-{tag}-1"),
        demo_referral("03-forced-labor-goods.json", f"ref-sim-{tag}-2"),
        demo_referral("04-coast-guard-boarding.json", f"ref-sim-{tag}-3"),
    ]
    publisher = EventPublisher(kafka_bootstrap, source="referral/intake")
    try:
        futures = [
            publisher.publish(
                topics.SUBMITTED,
                referral.referral_id,
                lifecycle_pb2.ReferralSubmitted(referral=referral, submitted_by=referral.source),
            )
            for referral in referrals
        ]
        publisher.flush(timeout=DEADLINE_S)
        for future in futures:
            future.get(timeout=DEADLINE_S)
    finally:
        publisher.close()
    text = default_policy_path().read_text(encoding="utf-8")
    r10 = text.index("  - id: R10\n")
    at = text.index("route_to: [hsi]", r10)
    candidate = tmp_path / "r10-ccht.yaml"
    candidate.write_text(text[:at] + "route_to: [ccht]" + text[at + len("route_to: [hsi]") :])

    code = main(
        [
            "policy",
            "simulate",
            "--policy",
            str(candidate),
            "--against",
            str(default_policy_path()),
            "--from-topic",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--at",
            AT,
            "--show",
            "1000000",
        ]
    )
    out, err = capsys.readouterr()

    assert code == 0, err
    found = re.search(r"^evaluated (\d+) referrals in ", out, re.MULTILINE)
    assert found is not None, out
    assert int(found.group(1)) >= len(referrals)
    records = re.search(rf"^read (\d+) records from {re.escape(topics.SUBMITTED)}: ", out, re.M)
    assert records is not None, out
    assert int(records.group(1)) >= len(referrals)
    mine = [line for line in out.splitlines() if f"ref-sim-{tag}-" in line]
    assert len(mine) == 1, out
    assert re.fullmatch(
        rf"ref-sim-{tag}-1 \({re.escape(topics.SUBMITTED)}\[\d\]@\d+\): \+ccht \(ROUTINE\); -hsi",
        mine[0],
    ), mine[0]
    # Other tests leave deliberately malformed records on the shared topic; simulate reports
    # those as not evaluable. None of this test's referrals may be among them.
    assert not [line for line in err.splitlines() if f"ref-sim-{tag}-" in line], err
