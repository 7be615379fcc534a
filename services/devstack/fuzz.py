"""Coverage-guided fuzzing of the system's input boundaries: `python -m devstack.fuzz TARGET`.

Three targets, all in-process (no broker, no network), each checking the same properties as the
hypothesis tests in ``tests/fuzz``:

``intake-validation``
    bytes -> ``SubmitReferralRequest`` (as the gRPC transport parses them) -> protovalidate ->
    the real ``ReferralIntake.SubmitReferral`` with a recording publisher and an in-memory
    ledger. Never an exception; every violation names a field (or is request-level) and has a
    reason that does not echo the request's values; an invalid request is answered
    INVALID_ARGUMENT with nothing published; a valid one is published exactly once, and the
    router routes what was published.
``router-record``
    headers + value -> ``ReferralRouter.handle`` (after the trace-context extraction the faust
    agent does). Never an exception; either routing output whose records all decode (inbox
    records are deliveries for the inbox's partner) or exactly one dead letter with its origin.
``partner-record``
    topic + headers + value -> ``EventConsumer._process`` with the partner desk's handler and the
    enforcement / victim-services domain behind it. Never an exception; either handled (status
    reports on the partner's status topic only) or exactly one dead letter with its origin.

The fuzzer is atheris (libFuzzer for Python): each target runs in a child process that imports
the project's modules under ``atheris.instrument_imports``, so libFuzzer sees Python branch
coverage and mutates towards new paths, starting from seed inputs written to the corpus. A
finding (exception or broken property) does not stop the run: it is counted, deduplicated by
exception type and innermost project frame, and its first input is saved as a reproducer.

    python -m devstack.fuzz all --runs 200000          # every target, one after the other
    python -m devstack.fuzz router-record --runs 50000
    python -m devstack.fuzz router-record --replay build/fuzz/router-record/crash-<id>.bin

Output goes under ``build/fuzz/<target>/`` (``corpus/``, ``crash-*.bin`` with a ``.txt``
traceback beside each, ``summary.json``). The exit status is non-zero when anything was found.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from unittest import mock

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from buf.validate import validate_pb2
from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2, referral_pb2
from enforcement.__main__ import view_of as enforcement_view
from enforcement.domain.work_items import PARTNERS as ENFORCEMENT_PARTNERS
from enforcement.domain.work_items import open_work_item
from plumbing import kafka as plumbing_kafka
from plumbing import partner_desk, topics
from plumbing.envelope import EnvelopeError, Headers, decode_event, event_headers
from plumbing.kafka import EventConsumer
from plumbing.telemetry import extract_trace_context
from plumbing.validation import TIMESTAMP_REASON, FieldViolation, violations_of
from referral.adapters.ledger import LedgerEntry, referral_id_for
from referral.domain.policy import Policy, load_default_policy
from referral.entrypoints.grpc_intake import MAX_REFERRAL_BYTES, ReferralIntake
from referral.router import RawRecord, ReferralRouter, RouterOutput
from victim_services.__main__ import view_of as victim_services_view
from victim_services.domain.cases import INBOX_PARTNERS, open_case

TARGETS = ("intake-validation", "router-record", "partner-record")
DEFAULT_OUT = Path("build") / "fuzz"
MAX_INPUT_BYTES = 64 * 1024
"""libFuzzer's -max_len: big enough for every seed and for most rules' limits."""

REQUEST_LEVEL_RULES = frozenset({"evaluation"})
"""Rule ids whose violation is about the whole request rather than a field."""

_FIELD_PATH = re.compile(r"^[a-z_][a-z0-9_]*(\[\d+\])?(\.[a-z_][a-z0-9_]*(\[\d+\])?)*$")
"""A violation path is field names and list indexes only: never a value (such as a map key)."""

_STANDARD_RULE_PHRASES = (
    "value must be one of the defined enum values",
    "must not be in list",
    "must be in list",
    "must contain no more than",
    "must contain at least",
    "item(s)",
    "repeated value must contain unique items",
    "value is required",
    "must be a valid email address",
    "must be a valid URI",
    "does not match regex pattern",
    "must be greater than or equal to",
    "and less than or equal to",
    "must be at most",
    "must be at least",
    "characters",
    "the request could not be checked against the contract",
    TIMESTAMP_REASON,
)
"""protovalidate's wording for the standard rules the contract uses (without their limits)."""

ECHO_MIN_CHARS = 4
"""Request values at least this long must never appear in an error message."""


class Finding(AssertionError):
    """A property of the system does not hold for an input (not a crash of the harness)."""


def _require(condition: object, message: str) -> None:
    if not condition:
        raise Finding(message)


# --- in-process stand-ins for Kafka and gRPC ------------------------------------------------------


@dataclass(frozen=True)
class SentRecord:
    """A record a component handed to its (recording) publisher."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


class _Acknowledged:
    """The future of a send that the broker acknowledged at once."""

    def get(self, timeout: float | None = None) -> None:
        return None


class RecordingPublisher:
    """An EventPublisher that keeps what it is asked to send instead of sending it."""

    def __init__(self, source: str = "devstack/fuzz") -> None:
        self.source = source
        self.sent: list[SentRecord] = []

    def publish(
        self,
        topic: str,
        key: str,
        event: Message,
        *,
        event_id: str | None = None,
        extra_headers: Headers | None = None,
    ) -> _Acknowledged:
        headers = event_headers(event, source=self.source, event_id=event_id)
        headers.extend(extra_headers or [])
        self.sent.append(SentRecord(topic, key.encode(), event.SerializeToString(), headers))
        return _Acknowledged()

    def publish_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> _Acknowledged:
        self.sent.append(SentRecord(topic, key, value, list(headers)))
        return _Acknowledged()

    def flush(self, timeout: float | None = 30) -> None:
        return None

    def close(self, timeout: float = 10) -> None:
        return None


class MemoryLedger:
    """The intake ledger's interface over a dict (one fuzz input never shares it with another)."""

    def __init__(self) -> None:
        self._by_reference: dict[tuple[str, str], LedgerEntry] = {}

    def find(self, source: str, source_reference: str) -> LedgerEntry | None:
        return self._by_reference.get((source, source_reference))

    def find_by_id(self, referral_id: str) -> tuple[str, str] | None:
        for pair, entry in self._by_reference.items():
            if entry.referral_id == referral_id:
                return pair
        return None

    def record(self, source: str, source_reference: str, entry: LedgerEntry) -> None:
        self._by_reference.setdefault((source, source_reference), entry)


class Aborted(Exception):
    """What `context.abort` raises in a real server: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str, status: Any = None) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        self.status = status

    def bad_request(self) -> error_details_pb2.BadRequest | None:
        """The google.rpc.BadRequest detail the status carries, if any."""
        if self.status is None:
            return None
        for key, value in self.status.trailing_metadata or ():
            if key == "grpc-status-details-bin":
                rich = status_pb2.Status.FromString(value)
                for detail in rich.details:
                    found = error_details_pb2.BadRequest()
                    if detail.Unpack(found):
                        return found
        return None


class AbortingContext:
    """The part of grpc.ServicerContext the intake uses; aborting raises like grpc does."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def abort_with_status(self, status: Any) -> None:
        raise Aborted(status.code, status.details, status)


# --- the intake ---------------------------------------------------------------------------------


@dataclass
class IntakeOutcome:
    """What one SubmitReferral call did."""

    violations: list[FieldViolation]
    response: intake_pb2.SubmitReferralResponse | None
    aborted: Aborted | None
    published: list[SentRecord]


def submit_in_process(request: intake_pb2.SubmitReferralRequest) -> IntakeOutcome:
    """Run the real ReferralIntake servicer on one request, without a broker or a server."""
    violations = violations_of(request)
    publisher = RecordingPublisher(source="referral/intake")
    servicer = ReferralIntake(cast(Any, publisher), cast(Any, MemoryLedger()))
    response = None
    aborted = None
    try:
        response = servicer.SubmitReferral(request, AbortingContext())
    except Aborted as error:
        aborted = error
    return IntakeOutcome(violations, response, aborted, publisher.sent)


def _scalar_texts(message: Message) -> Iterator[str]:
    """Every string (and number, as text) anywhere in a message."""
    for descriptor, value in message.ListFields():
        values = value if descriptor.is_repeated else [value]
        for item in values:
            if isinstance(item, Message):
                yield from _scalar_texts(item)
            elif isinstance(item, str):
                yield item
            elif isinstance(item, float) and item == item and abs(item) != float("inf"):
                yield str(item)
                if item == int(item):
                    yield str(int(item))
            elif isinstance(item, int | float) and not isinstance(item, bool):
                yield str(item)


def _messages_under(descriptor: Descriptor, seen: set[str]) -> Iterator[Descriptor]:
    if descriptor.full_name in seen:
        return
    seen.add(descriptor.full_name)
    yield descriptor
    for child in descriptor.fields:
        if child.message_type is not None:
            yield from _messages_under(child.message_type, seen)


_vocabulary_cache: list[str] = []


def rule_vocabulary() -> str:
    """All the text a violation reason may legitimately contain: the contract's rules (limits,
    patterns, CEL messages), its field names, and protovalidate's wording for standard rules.

    A request value that is part of this text cannot be told apart from it, so the echo check
    skips it ("must be", "0000" of "10000"); any other request value in a reason is an echo.
    """
    if not _vocabulary_cache:
        parts: list[str] = list(_STANDARD_RULE_PHRASES)
        for descriptor in _messages_under(intake_pb2.SubmitReferralRequest.DESCRIPTOR, set()):
            message_rules = descriptor.GetOptions().Extensions[validate_pb2.message]
            parts.extend(_scalar_texts(message_rules))
            for child in descriptor.fields:
                parts.append(child.name)
                field_rules = child.GetOptions().Extensions[validate_pb2.field]
                parts.extend(_scalar_texts(field_rules))
        _vocabulary_cache.append("\n".join(parts))
    return _vocabulary_cache[0]


def echo_candidates(message: Message) -> frozenset[str]:
    """The message's values that no error text may contain: at least ECHO_MIN_CHARS long and
    not part of the rules' own text."""
    vocabulary = rule_vocabulary()
    return frozenset(
        value
        for value in _scalar_texts(message)
        if len(value) >= ECHO_MIN_CHARS and value not in vocabulary
    )


def echoed_values(message: Message | frozenset[str], text: str) -> list[str]:
    """The message's values (see echo_candidates) that `text` contains."""
    candidates = message if isinstance(message, frozenset) else echo_candidates(message)
    return sorted(value for value in candidates if value in text)


def check_violations(
    request: Message, violations: Sequence[FieldViolation], candidates: frozenset[str] | None = None
) -> None:
    """Every violation names a field (or a request-level rule) and a reason that echoes nothing."""
    if candidates is None:
        candidates = echo_candidates(request) if violations else frozenset()
    for violation in violations:
        _require(
            violation.field or violation.rule_id in REQUEST_LEVEL_RULES,
            f"violation of {violation.rule_id!r} names no field",
        )
        _require(
            not violation.field or _FIELD_PATH.match(violation.field),
            f"violation path {violation.field!r} is not made of field names and indexes",
        )
        _require(
            isinstance(violation.reason, str) and violation.reason.strip(),
            f"violation of {violation.rule_id!r} at {violation.field!r} has no reason",
        )
        echoed = echoed_values(candidates, violation.reason)
        _require(not echoed, f"reason for {violation.field!r} echoes request values {echoed!r}")


_routers: list[RouterHarness] = []


def _router() -> RouterHarness:
    if not _routers:
        _routers.append(RouterHarness())
    return _routers[0]


def check_intake(request: intake_pb2.SubmitReferralRequest) -> IntakeOutcome:
    """The intake properties for one parsed request; raises Finding when one does not hold."""
    outcome = submit_in_process(request)
    too_big = request.ByteSize() > MAX_REFERRAL_BYTES
    rejected = too_big or bool(outcome.violations)
    candidates = echo_candidates(request) if rejected else frozenset()
    check_violations(request, outcome.violations, candidates)
    if rejected:
        _require(outcome.aborted is not None, "an invalid request was accepted")
        assert outcome.aborted is not None
        _require(
            outcome.aborted.code == grpc.StatusCode.INVALID_ARGUMENT,
            f"an invalid request was answered {outcome.aborted.code}, not INVALID_ARGUMENT",
        )
        _require(not outcome.published, "an invalid request was published (partial publish)")
        # The message names the violating fields by path; a value that merely spells part of a
        # path ("al.r" in "referral.received_at") is not an echo.
        details = outcome.aborted.details
        for violation in outcome.violations:
            if violation.field:
                details = details.replace(violation.field, "\n")
        echoed = echoed_values(candidates, details)
        _require(not echoed, f"the status message echoes request values {echoed!r}")
        if too_big:
            _require("512 KiB" in outcome.aborted.details, "the size limit is not named")
            return outcome
        bad_request = outcome.aborted.bad_request()
        _require(bad_request is not None, "INVALID_ARGUMENT without a BadRequest detail")
        assert bad_request is not None
        _require(
            len(bad_request.field_violations) == len(outcome.violations),
            "the BadRequest detail does not list every violation",
        )
        for listed in bad_request.field_violations:
            _require(listed.description.strip(), f"{listed.field!r} is listed without a reason")
        return outcome
    _require(
        outcome.aborted is None,
        f"a valid request was refused: {outcome.aborted.code if outcome.aborted else ''}",
    )
    _require(outcome.response is not None and outcome.response.referral_id, "no referral id")
    assert outcome.response is not None
    _require(len(outcome.published) == 1, f"{len(outcome.published)} records published, not 1")
    (record,) = outcome.published
    _require(record.topic == topics.SUBMITTED, f"published to {record.topic}")
    _require(record.key == outcome.response.referral_id.encode(), "key is not the referral id")
    _, event = decode_event(record.headers, record.value)
    _require(isinstance(event, lifecycle_pb2.ReferralSubmitted), "not a ReferralSubmitted")
    assert isinstance(event, lifecycle_pb2.ReferralSubmitted)
    _require(
        event.referral.referral_id
        == outcome.response.referral_id
        == referral_id_for(request.referral.source, request.referral.source_reference),
        "the published referral id differs from the one answered",
    )
    _require(event.referral.HasField("received_at"), "received_at not set by the intake")
    # What the intake accepts, the router must be able to route: a referral parked in dead
    # letters after its source was told "accepted" reaches no partner.
    routed = _router().check(
        RawRecord(topics.SUBMITTED, 0, 0, record.key, record.value, cast(Any, record.headers))
    )
    parked = [
        dict(r.headers).get("dlq_error") for r in routed.records if r.topic == topics.DEAD_LETTER
    ]
    _require(not parked, f"an accepted referral was dead-lettered by the router: {parked}")
    return outcome


def check_intake_bytes(data: bytes) -> IntakeOutcome | None:
    """The intake properties for request bytes; None when the transport could not parse them."""
    request = intake_pb2.SubmitReferralRequest()
    try:
        request.ParseFromString(data)
    except DecodeError:
        return None  # grpc answers such a call itself; the servicer never sees it
    return check_intake(request)


# --- the router ---------------------------------------------------------------------------------


def _require_dead_letter(
    letter: SentRecord,
    record: RawRecord,
    *,
    key: bytes | None,
    value: bytes | None,
    errors: tuple[str, ...],
    group_id: str,
    max_attempts: int,
) -> None:
    _require(letter.key == key, f"dead letter key {letter.key!r}, record key {record.key!r}")
    _require(letter.value == value, "the dead letter does not keep the record's value")
    meta = dict(letter.headers)  # the dlq_* headers come last, so they win over copied ones
    for name in ("dlq_topic", "dlq_partition", "dlq_offset", "dlq_error", "dlq_attempts"):
        _require(meta.get(name), f"dead letter without {name}")
    _require(meta["dlq_topic"] == record.topic.encode(), "dlq_topic is not the record's topic")
    _require(meta["dlq_partition"] == str(record.partition).encode(), "wrong dlq_partition")
    _require(meta["dlq_offset"] == str(record.offset).encode(), "wrong dlq_offset")
    _require(meta.get("dlq_consumer_group") == group_id.encode(), "wrong dlq_consumer_group")
    error = meta["dlq_error"].decode("utf-8", errors="replace")
    _require(error.startswith(errors), f"dlq_error {error[:80]!r} is not a clear reason")
    attempts = meta["dlq_attempts"].decode("ascii", errors="replace")
    _require(attempts.isdigit() and int(attempts) >= 1, f"dlq_attempts is {attempts[:20]!r}")
    redriven = any(k == plumbing_kafka.REDRIVEN_ATTEMPTS_HEADER for k, _ in record.headers)
    _require(redriven or int(attempts) <= max_attempts, f"dlq_attempts is {attempts}")
    originals = [(k, v) for k, v in record.headers if v is not None]
    _require(letter.headers[: len(originals)] == originals, "original headers not kept")


def _is_inbox(topic: str) -> bool:
    return topic.startswith("partner.") and topic.endswith(".inbox")


class RouterHarness:
    """The router under the shipped default policy, checked record by record."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.router = ReferralRouter(policy or load_default_policy())

    def handle(self, record: RawRecord) -> RouterOutput:
        # The router's consume loop extracts the trace context before handing the record over.
        extract_trace_context(record.headers)
        return self.router.handle(record)

    def check(self, record: RawRecord) -> RouterOutput:
        """The router properties for one record; raises Finding when one does not hold."""
        output = self.handle(record)
        dead = [r for r in output.records if r.topic == topics.DEAD_LETTER]
        if dead:
            _require(len(output.records) == 1, "a dead letter came with other records")
            _require(output.routed is None and output.correlated is None, "dead and routed")
            (letter,) = dead
            _require_dead_letter(
                SentRecord(letter.topic, letter.key, letter.value, letter.headers),
                record,
                key=record.key,
                value=record.value,
                errors=("undecodable record: ", "routing failed: "),
                group_id=self.router.group_id,
                max_attempts=1,
            )
            return output
        try:
            decode_event(record.headers, record.value)
        except EnvelopeError as error:
            raise Finding(f"an undecodable record was not dead-lettered: {error}") from error
        for out in output.records:
            try:
                _, event = decode_event(out.headers, out.value)
            except EnvelopeError as error:
                raise Finding(f"the router published an undecodable record: {error}") from error
            if _is_inbox(out.topic):
                _require(isinstance(event, delivery_pb2.PartnerDelivery), "inbox: not a delivery")
                assert isinstance(event, delivery_pb2.PartnerDelivery)
                _require(
                    topics.inbox(event.partner) == out.topic,
                    f"delivery for {event.partner!r} on {out.topic}",
                )
            else:
                _require(out.topic == topics.LIFECYCLE, f"published to {out.topic}")
        return output


# --- the partner desks ----------------------------------------------------------------------------


def _acknowledged() -> list[partner_desk.StatusReport]:
    return [partner_desk.StatusReport(lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED)]


def enforcement_delivery(delivery: delivery_pb2.PartnerDelivery) -> list[partner_desk.StatusReport]:
    """What `python -m enforcement` does with a delivery, without its work-item store."""
    open_work_item(enforcement_view(delivery))
    return _acknowledged()


def victim_services_delivery(
    delivery: delivery_pb2.PartnerDelivery,
) -> list[partner_desk.StatusReport]:
    """What `python -m victim_services` does with a delivery, without its case store."""
    open_case(victim_services_view(delivery))
    return _acknowledged()


class _CapturingConsumer:
    """Stands in for the EventConsumer run_partner_desk builds: keeps the handler it is given."""

    handler: plumbing_kafka.Handler | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def run(self, handler: plumbing_kafka.Handler, stop: threading.Event) -> None:
        _CapturingConsumer.handler = handler


@dataclass
class PartnerDesk:
    """One downstream service's consume path: the real EventConsumer._process and handler."""

    service: str
    publisher: RecordingPublisher
    consumer: EventConsumer
    handler: plumbing_kafka.Handler


def partner_desk_for(
    service: str, handle_delivery: partner_desk.DeliveryHandler, pattern: str
) -> PartnerDesk:
    """The partner desk `run_partner_desk` builds, with a recording publisher and no broker."""
    publisher = RecordingPublisher(source=service)
    with (
        mock.patch.object(partner_desk, "EventPublisher", return_value=publisher),
        mock.patch.object(partner_desk, "EventConsumer", _CapturingConsumer),
    ):
        partner_desk.run_partner_desk(
            bootstrap_servers="in-process",
            service_name=service,
            inbox_pattern=pattern,
            handle_delivery=handle_delivery,
            stop=threading.Event(),
        )
    handler = _CapturingConsumer.handler
    assert handler is not None, "run_partner_desk did not start its consumer"
    # The real consume step, without the KafkaConsumer its constructor would connect.
    consumer = EventConsumer.__new__(EventConsumer)
    consumer.group_id = service
    consumer._publisher = cast(Any, publisher)
    return PartnerDesk(service, publisher, consumer, handler)


@contextlib.contextmanager
def no_retry_pauses() -> Iterator[None]:
    """EventConsumer pauses between a failing handler's attempts; a fuzzer cannot wait."""
    fast = types.SimpleNamespace(sleep=lambda _seconds: None)
    with mock.patch.object(plumbing_kafka, "time", fast):
        yield


class PartnerHarness:
    """Both downstream services' consume paths, chosen by the record's inbox topic."""

    def __init__(self, policy: Policy | None = None) -> None:
        policy = policy or load_default_policy()
        self.topics = [topics.inbox(partner) for partner in sorted(policy.partners)]
        self.enforcement = partner_desk_for(
            "enforcement",
            enforcement_delivery,
            r"^partner\.(" + "|".join(ENFORCEMENT_PARTNERS) + r")\.inbox$",
        )
        self.victim_services = partner_desk_for(
            "victim-services",
            victim_services_delivery,
            r"^partner\.(" + INBOX_PARTNERS.pattern.strip("^$") + r")\.inbox$",
        )

    def desk_for(self, topic: str) -> PartnerDesk:
        partner = topic.split(".")[1]
        return self.enforcement if partner in ENFORCEMENT_PARTNERS else self.victim_services

    def process(self, record: RawRecord) -> list[SentRecord]:
        """What the desk serving the record's topic publishes for it."""
        desk = self.desk_for(record.topic)
        desk.publisher.sent.clear()
        desk.consumer._process(record, desk.handler)
        return list(desk.publisher.sent)

    def check(self, record: RawRecord) -> list[SentRecord]:
        """The partner-desk properties for one record; raises Finding when one does not hold."""
        desk = self.desk_for(record.topic)
        sent = self.process(record)
        dead = [s for s in sent if s.topic == topics.DEAD_LETTER]
        if dead:
            _require(len(sent) == 1, "a dead letter came with other records (partial publish)")
            _require_dead_letter(
                dead[0],
                record,
                key=record.key,
                value=record.value,
                # Bad input is rejected at the first attempt; "handler failed" (retried, then
                # parked) is for failures that might pass on a retry, which input cannot cause.
                errors=("undecodable record: ", "rejected: "),
                group_id=desk.service,
                max_attempts=1,
            )
            return sent
        try:
            _, delivery = decode_event(record.headers, record.value)
        except EnvelopeError as error:
            raise Finding(f"an undecodable record was not dead-lettered: {error}") from error
        _require(isinstance(delivery, delivery_pb2.PartnerDelivery), "handled a non-delivery")
        assert isinstance(delivery, delivery_pb2.PartnerDelivery)
        _require(topics.inbox(delivery.partner) == record.topic, "handled a misplaced delivery")
        for report in sent:
            _require(report.topic == topics.status(delivery.partner), f"sent to {report.topic}")
            _, event = decode_event(report.headers, report.value)
            _require(isinstance(event, delivery_pb2.DeliveryStatusReported), "not a status")
        return sent


# --- seeds and the byte format of record inputs --------------------------------------------------


def encode_record(headers: Sequence[tuple[str, bytes | None]], value: bytes | None) -> bytes:
    """A record as fuzzer bytes: header count (bit 7: value is null), then per header a 1-byte
    name length, the name, a 2-byte value length (0xFFFF: null) and the value; then the value."""
    out = bytearray([min(len(headers), 127) | (0x80 if value is None else 0)])
    for name, header in list(headers)[:127]:
        raw_name = name.encode()[:255]
        out += bytes([len(raw_name)]) + raw_name
        if header is None:
            out += struct.pack(">H", 0xFFFF)
        else:
            out += struct.pack(">H", min(len(header), 0xFFFE)) + header[:0xFFFE]
    return bytes(out + (value or b""))


def decode_record(data: bytes) -> tuple[list[tuple[str, bytes | None]], bytes | None]:
    """The inverse of encode_record; any bytes decode (a short input ends early)."""
    if not data:
        return [], b""
    count, null_value, at = data[0] & 0x7F, bool(data[0] & 0x80), 1
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        if at >= len(data):
            break
        size = data[at]
        name = data[at + 1 : at + 1 + size].decode("utf-8", errors="replace")
        at += 1 + size
        (length,) = struct.unpack(">H", data[at : at + 2].ljust(2, b"\0"))
        at += 2
        if length == 0xFFFF:
            headers.append((name, None))
        else:
            headers.append((name, data[at : at + length]))
            at += length
    return headers, None if null_value else data[at:]


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def seed_referral() -> referral_pb2.Referral:
    """A valid referral touching every part of the contract (a fixed, fictional report)."""
    now = datetime.now(UTC).replace(microsecond=0)
    R = referral_pb2
    return R.Referral(
        source="hsi-tipline",
        source_reference="TIP-FUZZ-0001",
        observed_at=_timestamp(now - timedelta(days=2)),
        indicators=[R.INDICATOR_LABOR_TRAFFICKING, R.INDICATOR_DOCUMENT_SERVITUDE],
        victims=[
            R.PotentialVictim(
                victim_ref="v1",
                full_name="Fuzz Example Person",
                date_of_birth="2008-02-29",
                phone="+1 202 555 0199",
                email="person@example.org",
                home_address=R.VictimAddress(
                    street="1 Example Way", city="Springfield", us_state="VA", postal_code="22150"
                ),
                documents=[
                    R.IdentityDocument(
                        kind=R.IDENTITY_DOCUMENT_KIND_PASSPORT, number="X1", issuing_country="GT"
                    )
                ],
                nationality="GT",
                us_state="TX",
                needs=[R.SERVICE_NEED_SHELTER, R.SERVICE_NEED_LEGAL],
                preferred_language="es",
                consents=[
                    R.Consent(
                        scope=R.CONSENT_SCOPE_VICTIM_SERVICES_REFERRAL,
                        granted_at=_timestamp(now - timedelta(hours=3)),
                        expires_at=_timestamp(now + timedelta(days=90)),
                    ),
                    R.Consent(
                        scope=R.CONSENT_SCOPE_LAW_ENFORCEMENT_CONTACT,
                        granted_at=_timestamp(now - timedelta(hours=3)),
                        expires_at=_timestamp(now + timedelta(days=90)),
                    ),
                ],
                count=1,
            ),
            R.PotentialVictim(victim_ref="v2", age=15, count=4, description="four teenagers"),
        ],
        suspects=[R.Suspect(name="Example Crew Boss")],
        reporter=R.Reporter(name="Example Tipster", phone="+1 202 555 0100", role="neighbour"),
        locations=[
            R.Location(kind=R.LOCATION_KIND_US_ADDRESS, us_state="TX"),
            R.Location(
                kind=R.LOCATION_KIND_AT_SEA,
                coordinates=R.Coordinates(latitude=25.5, longitude=-80.1),
            ),
            R.Location(kind=R.LOCATION_KIND_AIRPORT, airport_code="IAH"),
        ],
        vessel=R.Vessel(name="EXAMPLE TIDE", imo_number="9074729", flag_state="PA"),
        goods=[
            R.GoodsAllegation(
                product="cotton gloves",
                hts_code="6116.10",
                country_of_origin="CN",
                destined_for_us=True,
                shipment_ids=["BOL-1"],
            )
        ],
        imminent_danger=True,
        narrative="Workers sleep at the site; their passports are kept in the office.",
        attachments=[R.Attachment(uri="https://evidence.example/a/1", media_type="image/jpeg")],
    )


def seed_requests() -> list[intake_pb2.SubmitReferralRequest]:
    """Valid requests, plain and rich, for the intake target's corpus."""
    rich = intake_pb2.SubmitReferralRequest(referral=seed_referral())
    plain = intake_pb2.SubmitReferralRequest(
        referral=referral_pb2.Referral(
            source="cbp-eallegations",
            source_reference="E-1",
            indicators=[referral_pb2.INDICATOR_FORCED_LABOR_IN_GOODS],
        )
    )
    broken = intake_pb2.SubmitReferralRequest()
    broken.CopyFrom(rich)
    broken.referral.indicators.append(referral_pb2.Indicator.ValueType(99))
    broken.referral.victims[0].date_of_birth = "2001-02-29"
    broken.referral.victims[1].age = -1
    broken.referral.locations[1].ClearField("coordinates")
    broken.referral.referral_id = "chosen-by-caller"
    return [plain, rich, broken]


def _routed_referral() -> referral_pb2.Referral:
    referral = referral_pb2.Referral()
    referral.CopyFrom(seed_referral())
    referral.referral_id = referral_id_for(referral.source, referral.source_reference)
    referral.received_at.CopyFrom(_timestamp(datetime.now(UTC)))
    return referral


def seed_events() -> list[Message]:
    """Events of every kind the submitted topic carries, for the router target's corpus."""
    referral = _routed_referral()
    submitted = lifecycle_pb2.ReferralSubmitted(referral=referral, submitted_by=referral.source)
    amended = lifecycle_pb2.ReferralAmended(referral=referral, reason="corrected state")
    withdrawn = lifecycle_pb2.ReferralWithdrawn(referral_id=referral.referral_id, reason="dup")
    return [submitted, amended, withdrawn]


def seed_deliveries() -> list[tuple[str, Message]]:
    """The deliveries the router makes of the rich seed referral: (inbox topic, delivery)."""
    submitted = seed_events()[0]
    consumed = RawRecord(
        topics.SUBMITTED,
        0,
        0,
        b"seed",
        submitted.SerializeToString(),
        cast(Any, event_headers(submitted, source="fuzz")),
    )
    found = []
    for record in ReferralRouter(load_default_policy()).handle(consumed).records:
        if _is_inbox(record.topic):
            _, event = decode_event(record.headers, record.value)
            found.append((record.topic, event))
    return found


def _seed_inputs(target: str) -> list[bytes]:
    if target == "intake-validation":
        return [request.SerializeToString() for request in seed_requests()]
    if target == "router-record":
        return [
            encode_record(event_headers(event, source="fuzz"), event.SerializeToString())
            for event in seed_events()
        ]
    partner_topics = PartnerHarness().topics
    return [
        bytes([partner_topics.index(topic)])
        + encode_record(event_headers(event, source="fuzz"), event.SerializeToString())
        for topic, event in seed_deliveries()
    ]


# --- running a target ----------------------------------------------------------------------------


def target_function(target: str) -> Callable[[bytes], object]:
    """The check of one fuzz input for a target: raises on a crash or a broken property."""
    if target == "intake-validation":
        return check_intake_bytes
    if target == "router-record":
        router = RouterHarness()

        def router_record(data: bytes) -> object:
            headers, value = decode_record(data)
            key = b"fuzz-key"
            return router.check(RawRecord(topics.SUBMITTED, 1, 42, key, value, cast(Any, headers)))

        return router_record
    if target == "partner-record":
        partners = PartnerHarness()

        def partner_record(data: bytes) -> object:
            topic = partners.topics[data[0] % len(partners.topics)] if data else partners.topics[0]
            headers, value = decode_record(data[1:])
            return partners.check(RawRecord(topic, 2, 7, b"fuzz-key", value, cast(Any, headers)))

        return partner_record
    raise SystemExit(f"unknown fuzz target {target!r}: choose from {', '.join(TARGETS)} or all")


def _signature(error: BaseException) -> str:
    """Exception type and where in project code it arose: one signature per distinct bug.

    For an exception, the innermost frame outside installed packages; for a broken property
    (Finding), the check that raised it, since its message quotes input-dependent values.
    """
    frames = list(traceback.extract_tb(error.__traceback__))
    if isinstance(error, Finding):
        frames = [f for f in frames if f.name != "_require"]
    mine = [f for f in frames if "site-packages" not in f.filename] or frames
    if not mine:
        return type(error).__name__
    frame = mine[-1]
    return f"{type(error).__name__} in {frame.name} at {Path(frame.filename).name}:{frame.lineno}"


@dataclass
class FuzzStats:
    """Counts of one target's run, written to summary.json at its end."""

    target: str
    runs: int = 0
    crashes: int = 0
    unique: dict[str, str] = field(default_factory=dict)  # signature -> reproducer path
    started: float = field(default_factory=time.monotonic)

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "runs": self.runs,
            "crashes": self.crashes,
            "unique_crashes": len(self.unique),
            "reproducers": self.unique,
            "seconds": round(time.monotonic() - self.started, 1),
        }


def _record_crash(stats: FuzzStats, out: Path, data: bytes, error: BaseException) -> None:
    stats.crashes += 1
    signature = _signature(error)
    if signature in stats.unique:
        return
    digest = hashlib.sha1(signature.encode(), usedforsecurity=False).hexdigest()[:12]
    path = out / f"crash-{digest}.bin"
    path.write_bytes(data)
    text = "".join(traceback.format_exception(error))
    path.with_suffix(".txt").write_text(f"{signature}\n\n{text}", encoding="utf-8")
    # The message of a broken property says which; it may quote the input, so only locally.
    stats.unique[signature] = str(path)
    first_line = (str(error).splitlines() or [""])[0][:200]
    print(
        f"[{stats.target}] NEW crash {signature}: {first_line}\n    reproducer: {path}",
        flush=True,
    )


def _finish(stats: FuzzStats, out: Path) -> None:
    summary = stats.as_json()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"[{stats.target}] done: {stats.runs} runs in {summary['seconds']}s, "
        f"{stats.crashes} crashes, {len(stats.unique)} unique",
        flush=True,
    )
    for signature, path in stats.unique.items():
        print(f"    {signature}\n      reproducer: {path}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if stats.unique else 0)


def fuzz_child(argv: Sequence[str]) -> None:
    """Run one target under atheris; called in a child whose imports atheris instrumented."""
    atheris = importlib.import_module("atheris")  # only the fuzz child needs it (no stubs)

    target, runs, out_dir, max_len = argv[0], int(argv[1]), Path(argv[2]), int(argv[3])
    check = target_function(target)
    out = out_dir / target
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for data in _seed_inputs(target):
        seed = corpus / f"seed-{hashlib.sha1(data, usedforsecurity=False).hexdigest()[:16]}"
        seed.write_bytes(data)
    stats = FuzzStats(target)
    every = max(1, runs // 20)

    def one_input(data: bytes) -> None:
        stats.runs += 1
        try:
            check(data)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # a PyO3 panic is a BaseException: count it too
            _record_crash(stats, out, data, error)
        if stats.runs % every == 0:
            elapsed = max(time.monotonic() - stats.started, 1e-6)
            print(
                f"[{target}] {stats.runs}/{runs} runs, {stats.crashes} crashes "
                f"({len(stats.unique)} unique), {stats.runs / elapsed:.0f} runs/s",
                flush=True,
            )
        if stats.runs >= runs:
            _finish(stats, out)

    atheris.Setup(
        [
            "devstack.fuzz",
            str(corpus),
            f"-max_len={max_len}",
            f"-artifact_prefix={out}{os.sep}",
            "-len_control=0",  # seeds are whole requests: mutate them at full length at once
            "-timeout=30",
            "-rss_limit_mb=4096",
            "-print_final_stats=0",
        ],
        one_input,
    )
    with no_retry_pauses():  # for the whole run: _finish ends the process from inside Fuzz()
        atheris.Fuzz()
    _finish(stats, out)  # libFuzzer returned early (it ran out of inputs): report what ran


_CHILD = """
import sys
import atheris
with atheris.instrument_imports(
    include=["plumbing", "referral", "enforcement", "victim_services", "devstack.fuzz"]
):
    from devstack import fuzz
fuzz.fuzz_child(sys.argv[1:])
"""


def run_target(target: str, runs: int, out_dir: Path, max_len: int) -> dict[str, Any]:
    """Fuzz one target in a child process; its summary (or why there is none)."""
    print(f"[{target}] fuzzing {runs} inputs (atheris/libFuzzer), output in {out_dir / target}")
    summary_path = out_dir / target / "summary.json"
    summary_path.unlink(missing_ok=True)
    started = time.time()
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, target, str(runs), str(out_dir), str(max_len)],
        check=False,
    )
    if summary_path.exists():
        summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["exit_code"] = child.returncode
        return summary
    # libFuzzer itself stopped the child: a timeout, out of memory or a native crash.
    artifacts = sorted(
        str(p)
        for p in (out_dir / target).glob("*-*")
        if p.is_file() and p.stat().st_mtime >= started
    )
    return {
        "target": target,
        "runs": None,
        "crashes": 1,
        "unique_crashes": 1,
        "reproducers": {f"libFuzzer stopped the target (exit {child.returncode})": artifacts},
        "exit_code": child.returncode,
    }


def replay(target: str, path: Path) -> int:
    """Run one saved input through a target's checks, in this process, and say what happens."""
    check = target_function(target)
    with no_retry_pauses():
        try:
            check(path.read_bytes())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            traceback.print_exc()
            print(f"{path}: reproduces a finding in {target}")
            return 1
    print(f"{path}: passes every {target} property")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.fuzz", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("target", choices=[*TARGETS, "all"])
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--max-len", type=int, default=MAX_INPUT_BYTES, help="max input bytes")
    parser.add_argument("--replay", type=Path, help="check one saved input instead of fuzzing")
    args = parser.parse_args(argv)
    if args.replay is not None:
        if args.target == "all":
            parser.error("--replay needs one target")
        return replay(args.target, args.replay)
    chosen = list(TARGETS) if args.target == "all" else [args.target]
    summaries = [run_target(t, args.runs, args.out, args.max_len) for t in chosen]
    print("\nfuzz summary")
    failed = False
    for summary in summaries:
        print(
            f"  {summary['target']}: {summary['runs']} runs, {summary['crashes']} crashes, "
            f"{summary['unique_crashes']} unique"
        )
        for signature, where in summary["reproducers"].items():
            print(f"    {signature}\n      reproducer: {where}")
        failed = failed or bool(summary["unique_crashes"]) or summary["exit_code"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
