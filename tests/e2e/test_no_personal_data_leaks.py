"""Personal data never reaches logs or spans: canaries planted in every sensitive field of the
contract travel through the whole system, then every exported span and log line is scanned.

The fields to plant are found from the contract's sensitivity classes, not from a list kept by
hand, so a sensitive field added later is covered without touching this test.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ctroute.referral.v1 import intake_pb2, lifecycle_pb2, referral_pb2
from plumbing import topics
from plumbing.sensitivity import class_value, sensitivity_of
from tests.e2e.system import RunningSystem
from tests.kafka_reading import read_until

pytestmark = pytest.mark.broker

OPERATIONAL = class_value("OPERATIONAL")
# Fields whose contract constrains their form get a canary of that form.
SHAPED = {
    "phone": lambda tag: f"+1 555 {int(tag[:6], 16) % 10_000_000:07d}",
    "email": lambda tag: f"cnry{tag}@example.org",
    "uri": lambda tag: f"https://evidence.example.org/cnry{tag}",
    "date_of_birth": lambda _tag: "",
    "sha256": lambda _tag: "",
    "hts_code": lambda _tag: "",
    "postal_code": lambda _tag: "",
    "us_state": lambda _tag: "",
    "nationality": lambda _tag: "",
    "issuing_country": lambda _tag: "",
    "country_of_origin": lambda _tag: "",
    "preferred_language": lambda _tag: "",
}


def plant(message: Message, canaries: list[str], inherited_sensitive: bool = False) -> None:
    """Fill every string field under a sensitive class with a unique canary, recursively."""
    for field in message.DESCRIPTOR.fields:
        sensitive = inherited_sensitive or sensitivity_of(field) != OPERATIONAL
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name.startswith("google.protobuf"):
                continue
            target = getattr(message, field.name)
            child = target.add() if field.is_repeated else target
            plant(child, canaries, sensitive)
        elif field.type == FieldDescriptor.TYPE_STRING and sensitive:
            tag = uuid.uuid4().hex[:10]
            value = SHAPED[field.name](tag) if field.name in SHAPED else f"cnry{tag}"
            if not value:
                continue
            if field.is_repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)
            canaries.append(value)


def _request(canaries: list[str], source: str, imminent: bool) -> intake_pb2.SubmitReferralRequest:
    request = intake_pb2.SubmitReferralRequest()
    referral = request.referral
    plant(referral, canaries)
    referral.source = source
    referral.source_reference = f"pii-{uuid.uuid4().hex[:12]}"
    referral.imminent_danger = imminent
    referral.indicators[:] = [
        referral_pb2.INDICATOR_SEX_TRAFFICKING,
        referral_pb2.INDICATOR_FORCED_LABOR_IN_GOODS,
    ]
    for victim in referral.victims:
        victim.victim_ref = "v1"
        victim.age = 16
        victim.us_state = "GA"
        del victim.needs[:]
        del victim.consents[:]
        victim.documents[0].kind = referral_pb2.IDENTITY_DOCUMENT_KIND_PASSPORT
    location = referral.locations[0]
    location.kind = referral_pb2.LOCATION_KIND_US_ADDRESS
    location.us_state = "GA"
    location.ClearField("coordinates")
    referral.goods[0].destined_for_us = True
    return request


def _scan(paths: list[Path], canaries: list[str]) -> list[str]:
    leaks = []
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        leaks += [f"{path.name}: {c}" for c in canaries if c in text]
    return leaks


def test_canaries_in_every_sensitive_field_never_reach_logs_or_spans(
    running_system: RunningSystem,
) -> None:
    canaries: list[str] = []
    requests = [
        _request(canaries, "hsi-tipline", imminent=False),
        _request(canaries, "bli-airline", imminent=True),
    ]
    assert len(canaries) > 30, "the contract should have many sensitive string fields"
    ids = [running_system.intake().SubmitReferral(r, timeout=15).referral_id for r in requests]

    # Wait until every delivery of both referrals was acknowledged: the whole path ran.
    routed = read_until(
        running_system.bootstrap_servers,
        [topics.LIFECYCLE],
        keep=lambda r: r.key in ids and isinstance(r.event, lifecycle_pb2.ReferralRouted),
        want=lambda kept: len(kept) == 2,
    )
    expected = {(r.key, p.delivery_id) for r in routed for p in r.event.decision.partners}  # type: ignore[attr-defined]
    partners = {p.partner for r in routed for p in r.event.decision.partners}  # type: ignore[attr-defined]
    read_until(
        running_system.bootstrap_servers,
        [topics.status(p) for p in partners],
        keep=lambda r: r.key in ids,
        want=lambda kept: {(r.key, r.event.report.delivery_id) for r in kept} >= expected,  # type: ignore[attr-defined]
        timeout=60,
    )
    # The canaries did travel: the CCHT desk may see everything.
    ccht = read_until(
        running_system.bootstrap_servers,
        [topics.inbox("ccht")],
        keep=lambda r: r.key in ids,
        want=lambda kept: len(kept) >= 1,
    )
    assert any(c.encode() in ccht[0].raw_value for c in canaries)

    trace_files = sorted(running_system.trace_dir.glob("*.jsonl"))
    log_files = sorted(running_system.log_dir.glob("*.log"))
    assert trace_files
    assert log_files
    assert any(json.loads(line) for line in trace_files[0].read_text().splitlines()[:1])
    leaks = _scan(trace_files + log_files, canaries)
    assert not leaks, f"personal data found outside Kafka records: {leaks[:10]}"
