"""The gRPC intake rejects invalid referrals precisely, and nothing invalid reaches Kafka.

Every request goes through the real gRPC server (in-process, on a free port) and the real
broker. Each invalid kind is a row of CASES: the test asserts INVALID_ARGUMENT, the exact field
paths listed in the google.rpc.BadRequest detail, reasons that are present and do not echo the
offending value, and that the submitted topic did not grow. At the end, every record that
reached the topic during this module is shown to belong to an accepted submission.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from kafka import KafkaConsumer, TopicPartition

from ctroute.referral.v1 import intake_pb2, lifecycle_pb2
from ctroute.referral.v1 import referral_pb2 as R
from plumbing import topics

if TYPE_CHECKING:
    from tests.integration.intake import IntakeServer

pytestmark = pytest.mark.broker

DEADLINE_S = 30.0
RPC_TIMEOUT_S = 20.0
SIZE_LIMIT = 512 * 1024
SOURCE = "hsi-tipline"

# Personal data in the valid base referral: no error message may ever contain it.
VICTIM_NAME = "Maria Example-Lopez"
VICTIM_PHONE = "+1 202 555 0147"
VICTIM_EMAIL = "maria.example@example.org"
VICTIM_STREET = "742 Sample Street"
REPORTER_NAME = "Jordan Tipster-Example"
BASE_PII = (VICTIM_NAME, VICTIM_PHONE, VICTIM_EMAIL, VICTIM_STREET, REPORTER_NAME)


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _reference() -> str:
    return f"TIP-{uuid.uuid4().hex[:12]}"


def valid_request(source_reference: str | None = None) -> intake_pb2.SubmitReferralRequest:
    """A referral that passes every rule; each invalid case breaks exactly one thing in it."""
    now = datetime.now(UTC)
    referral = R.Referral(
        source=SOURCE,
        source_reference=source_reference or _reference(),
        observed_at=_ts(now - timedelta(days=1)),
        indicators=[R.INDICATOR_LABOR_TRAFFICKING, R.INDICATOR_DOCUMENT_SERVITUDE],
        victims=[
            R.PotentialVictim(
                victim_ref="v1",
                full_name=VICTIM_NAME,
                date_of_birth="1999-04-30",
                phone=VICTIM_PHONE,
                email=VICTIM_EMAIL,
                home_address=R.VictimAddress(
                    street=VICTIM_STREET, city="Springfield", us_state="VA", postal_code="22150"
                ),
                documents=[
                    R.IdentityDocument(
                        kind=R.IDENTITY_DOCUMENT_KIND_PASSPORT,
                        number="P1234567",
                        issuing_country="GT",
                    )
                ],
                nationality="GT",
                us_state="VA",
                needs=[R.SERVICE_NEED_SHELTER],
                preferred_language="es",
                consents=[
                    R.Consent(
                        scope=R.CONSENT_SCOPE_VICTIM_SERVICES_REFERRAL,
                        granted_at=_ts(now - timedelta(hours=2)),
                        expires_at=_ts(now + timedelta(days=180)),
                    )
                ],
                count=1,
            ),
            R.PotentialVictim(victim_ref="v2", age=16, count=1, needs=[R.SERVICE_NEED_MEDICAL]),
        ],
        reporter=R.Reporter(name=REPORTER_NAME, phone="+1 202 555 0100", role="neighbour"),
        locations=[
            R.Location(
                kind=R.LOCATION_KIND_US_ADDRESS,
                us_state="VA",
                address=R.UsAddress(street="1 Warehouse Rd", city="Springfield", us_state="VA"),
            )
        ],
        vessel=R.Vessel(name="SAMPLE TIDE", imo_number="9074729", flag_state="PA"),
        goods=[
            R.GoodsAllegation(product="cotton gloves", hts_code="6116.10", country_of_origin="CN")
        ],
        narrative="Workers sleep at the warehouse and their passports are kept in the office.",
    )
    return intake_pb2.SubmitReferralRequest(referral=referral)


# --- the table of invalid inputs ---------------------------------------------------------------

Mutation = Callable[[intake_pb2.SubmitReferralRequest], None]


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    paths: list[str]  # every expected violation's field path (sorted; repeats count)
    offending: tuple[str, ...] = ()  # values no reason or status message may contain


def _set(**fields: Any) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        for name, value in fields.items():
            setattr(request.referral, name, value)

    return mutate


def _victim(index: int, **fields: Any) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        for name, value in fields.items():
            setattr(request.referral.victims[index], name, value)

    return mutate


def _empty(request: intake_pb2.SubmitReferralRequest) -> None:
    request.Clear()


def _indicators(*values: int) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        request.referral.indicators[:] = list(values)

    return mutate


def _no_indicator_no_narrative(request: intake_pb2.SubmitReferralRequest) -> None:
    del request.referral.indicators[:]
    request.referral.narrative = ""


def _at_sea(*, coordinates: bool, latitude: float = 25.1, street: str | None = None) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        location = R.Location(kind=R.LOCATION_KIND_AT_SEA)
        if coordinates:
            location.coordinates.latitude = latitude
            location.coordinates.longitude = -80.2
        if street is not None:
            location.address.street = street
            location.address.us_state = "FL"
        del request.referral.locations[:]
        request.referral.locations.append(location)

    return mutate


def _caller_received_at(request: intake_pb2.SubmitReferralRequest) -> None:
    request.referral.received_at.CopyFrom(_ts(datetime(2024, 1, 2, tzinfo=UTC)))


def _consent(*, expires_in: timedelta | None) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        consent = request.referral.victims[0].consents[0]
        consent.granted_at.CopyFrom(_ts(datetime(2024, 3, 1, tzinfo=UTC)))
        if expires_in is None:
            consent.ClearField("expires_at")
        else:
            consent.expires_at.CopyFrom(_ts(datetime(2024, 3, 1, tzinfo=UTC) + expires_in))

    return mutate


def _vessel_imo(value: str) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        request.referral.vessel.imo_number = value

    return mutate


def _hts(value: str) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        request.referral.goods[0].hts_code = value

    return mutate


def _location_kind(value: int) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        request.referral.locations[0].kind = value  # type: ignore[assignment]

    return mutate


def _attachment_uri(value: str) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        request.referral.attachments.add(uri=value, media_type="image/jpeg")

    return mutate


def _several(*mutations: Mutation) -> Mutation:
    def mutate(request: intake_pb2.SubmitReferralRequest) -> None:
        for mutation in mutations:
            mutation(request)

    return mutate


FUTURE_DOB = (date.today() + timedelta(days=3)).isoformat()
LONG_NARRATIVE = "Long account. " + "The foreman keeps everyone's papers. " * 600
ALL_INDICATORS = [value for value in R.Indicator.values() if value != R.INDICATOR_UNSPECIFIED]

CASES = [
    Case("empty-request", _empty, ["referral"]),
    Case("missing-source", _set(source=""), ["referral.source"]),
    Case("bad-source-pattern", _set(source="HSI Tipline!"), ["referral.source"], ("HSI Tipline!",)),
    Case("empty-source-reference", _set(source_reference=""), ["referral.source_reference"]),
    Case(
        "unknown-indicator-99",
        _indicators(R.INDICATOR_SEX_TRAFFICKING, 99),
        ["referral.indicators[1]"],
        ("99",),
    ),
    Case(
        "indicator-unspecified",
        _indicators(R.INDICATOR_SEX_TRAFFICKING, R.INDICATOR_UNSPECIFIED),
        ["referral.indicators[1]"],
    ),
    Case("duplicate-indicator", _indicators(2, 5, 2), ["referral.indicators"]),
    Case(
        "too-many-indicators",  # 17 > 16; only 8 kinds exist, so repeats break uniqueness too
        _indicators(*ALL_INDICATORS, *ALL_INDICATORS, ALL_INDICATORS[0]),
        ["referral.indicators", "referral.indicators"],
    ),
    Case("no-indicator-and-no-narrative", _no_indicator_no_narrative, ["referral"]),
    Case(
        "narrative-too-long",
        _set(narrative=LONG_NARRATIVE),
        ["referral.narrative"],
        (LONG_NARRATIVE[:40],),
    ),
    Case("victim-age-negative", _victim(1, age=-1), ["referral.victims[1].age"], ("-1",)),
    Case("victim-age-121", _victim(1, age=121), ["referral.victims[1].age"], ("121",)),
    Case(
        "date-of-birth-february-31",
        _victim(0, date_of_birth="2001-02-31"),
        ["referral.victims[0].date_of_birth"],
        ("2001-02-31",),
    ),
    Case(
        "date-of-birth-not-iso",
        _victim(0, date_of_birth="31/12/2001"),
        ["referral.victims[0].date_of_birth"],
        ("31/12/2001",),
    ),
    Case(
        "date-of-birth-in-future",
        _victim(0, date_of_birth=FUTURE_DOB),
        ["referral.victims[0].date_of_birth"],
        (FUTURE_DOB,),
    ),
    Case(
        "bad-email",
        _victim(0, email="maria.example(at)example.org"),
        ["referral.victims[0].email"],
        ("maria.example(at)example.org",),
    ),
    Case(
        "bad-phone",
        _victim(0, phone="call me at night"),
        ["referral.victims[0].phone"],
        ("call me at night",),
    ),
    Case(
        "bad-nationality-code",
        _victim(0, nationality="usa"),
        ["referral.victims[0].nationality"],
        ("usa",),
    ),
    Case(
        "at-sea-with-us-street-address",
        _at_sea(coordinates=True, street="55 Harbor Blvd"),
        ["referral.locations[0]"],
        ("55 Harbor Blvd",),
    ),
    Case("at-sea-without-coordinates", _at_sea(coordinates=False), ["referral.locations[0]"]),
    Case(
        "latitude-91",
        _at_sea(coordinates=True, latitude=91.0),
        ["referral.locations[0].coordinates.latitude"],
        ("91",),
    ),
    Case("location-kind-unspecified", _location_kind(0), ["referral.locations[0].kind"]),
    Case(
        "referral-id-set-by-caller",
        _set(referral_id="ref-chosen-by-caller"),
        ["referral.referral_id"],
        ("ref-chosen-by-caller",),
    ),
    Case("received-at-set-by-caller", _caller_received_at, ["referral.received_at"]),
    Case(
        "consent-without-expiry",
        _consent(expires_in=None),
        ["referral.victims[0].consents[0].expires_at"],
    ),
    Case(
        "consent-expires-before-granted",
        _consent(expires_in=-timedelta(days=1)),
        ["referral.victims[0].consents[0]"],
    ),
    Case("bad-imo-number", _vessel_imo("12345"), ["referral.vessel.imo_number"], ("12345",)),
    Case("bad-hts-code", _hts("6116-10"), ["referral.goods[0].hts_code"], ("6116-10",)),
    Case(
        "attachment-uri-not-a-uri",
        _attachment_uri("evidence photo 1"),
        ["referral.attachments[0].uri"],
        ("evidence photo 1",),
    ),
    Case(
        "several-problems-at-once",
        _several(
            _set(source="Bad Source"),
            _victim(1, age=200),
            _victim(0, date_of_birth="1999-13-01"),
            _at_sea(coordinates=True, latitude=-95.0),
            _hts("61"),
        ),
        sorted(
            [
                "referral.source",
                "referral.victims[0].date_of_birth",
                "referral.victims[1].age",
                "referral.locations[0].coordinates.latitude",
                "referral.goods[0].hts_code",
            ]
        ),
        ("Bad Source", "200", "1999-13-01", "-95"),
    ),
]


# --- helpers: the submitted topic --------------------------------------------------------------


@dataclass
class SubmittedLog:
    """Reads the submitted topic's end offsets and records, without a consumer group."""

    consumer: KafkaConsumer
    partitions: list[TopicPartition]
    baseline: dict[TopicPartition, int] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)  # keys of submissions the server accepted

    def end_offsets(self) -> dict[TopicPartition, int]:
        return dict(self.consumer.end_offsets(self.partitions))

    def read_from(self, start: dict[TopicPartition, int], count: int) -> list[Any]:
        """The records after `start`, polling until `count` arrived or the deadline passed."""
        for tp in self.partitions:
            self.consumer.seek(tp, start[tp])
        records: list[Any] = []
        deadline = time.monotonic() + DEADLINE_S
        while len(records) < count and time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records


@pytest.fixture(scope="module")
def submitted_log(intake_server: IntakeServer) -> Iterator[SubmittedLog]:
    consumer = KafkaConsumer(bootstrap_servers=intake_server.bootstrap, enable_auto_commit=False)
    try:
        partitions = sorted(
            TopicPartition(topics.SUBMITTED, p)
            for p in consumer.partitions_for_topic(topics.SUBMITTED) or ()
        )
        assert len(partitions) == topics.PARTITIONS
        consumer.assign(partitions)
        log = SubmittedLog(consumer, partitions)
        log.baseline = log.end_offsets()
        yield log
    finally:
        consumer.close()


def _total(offsets: dict[TopicPartition, int]) -> int:
    return sum(offsets.values())


def _submit(
    server: IntakeServer, request: intake_pb2.SubmitReferralRequest, **kwargs: Any
) -> intake_pb2.SubmitReferralResponse:
    response: intake_pb2.SubmitReferralResponse = server.stub.SubmitReferral(
        request, timeout=RPC_TIMEOUT_S, **kwargs
    )
    return response


def _submit_valid(
    server: IntakeServer,
    log: SubmittedLog,
    request: intake_pb2.SubmitReferralRequest,
    **kwargs: Any,
) -> intake_pb2.SubmitReferralResponse:
    response = _submit(server, request, **kwargs)
    log.accepted.add(response.referral_id)
    return response


def _rejection(server: IntakeServer, request: intake_pb2.SubmitReferralRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _submit(server, request)
    return caught.value


def _bad_request(error: grpc.RpcError) -> error_details_pb2.BadRequest:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status details"
    assert len(status.details) == 1
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request), status.details[0].type_url
    return bad_request


def _header(record: Any, name: str) -> str:
    values = [value.decode() for key, value in record.headers if key == name]
    assert len(values) == 1, f"header {name} appears {len(values)} times"
    return values[0]


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_invalid_submission_is_rejected_with_every_field_path(
    intake_server: IntakeServer, submitted_log: SubmittedLog, case: Case
) -> None:
    request = valid_request()
    case.mutate(request)
    before = submitted_log.end_offsets()

    error = _rejection(intake_server, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = _bad_request(error)
    assert sorted(v.field for v in bad_request.field_violations) == case.paths
    message = error.details() or ""
    for violation in bad_request.field_violations:
        assert violation.description.strip(), f"{violation.field} has no reason"
        for value in (*case.offending, *BASE_PII):
            assert value not in violation.description, f"{violation.field} echoes {value!r}"
    for value in (*case.offending, *BASE_PII):
        assert value not in message, f"the status message echoes {value!r}"
    assert submitted_log.end_offsets() == before, "a rejected referral reached Kafka"


def test_the_cases_cover_at_least_fifteen_kinds_of_invalid_input() -> None:
    assert len({case.id for case in CASES}) == len(CASES) >= 15


def test_the_base_request_is_valid(
    intake_server: IntakeServer, submitted_log: SubmittedLog
) -> None:
    """Without this, a case could be rejected for a problem in the base, not its own."""
    before = submitted_log.end_offsets()

    response = _submit_valid(intake_server, submitted_log, valid_request())
    records = submitted_log.read_from(before, 1)

    assert response.referral_id
    assert [record.key for record in records] == [response.referral_id.encode()]


def _oversized_request() -> intake_pb2.SubmitReferralRequest:
    """Valid by every field rule, but over 512 KiB: 200 victims with long free text."""
    request = valid_request()
    del request.referral.victims[:]
    for index in range(200):
        request.referral.victims.add(
            victim_ref=f"g{index}",
            count=3,
            description=f"group {index}: " + "workers seen at the packing shed at night. " * 34,
            safety_concerns="the crew boss carries a weapon and watches the gate. " * 28,
        )
    return request


def test_a_referral_over_512_kib_is_rejected_naming_the_limit(
    intake_server: IntakeServer, submitted_log: SubmittedLog
) -> None:
    request = _oversized_request()
    assert SIZE_LIMIT < request.ByteSize() < 4 * 1024 * 1024
    assert request.referral.victims[0].description  # the rules themselves are satisfied
    before = submitted_log.end_offsets()

    error = _rejection(intake_server, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = error.details() or ""
    assert "512 KiB" in message
    assert "packing shed" not in message
    assert VICTIM_NAME not in message
    assert submitted_log.end_offsets() == before


def test_a_referral_just_under_512_kib_is_accepted(
    intake_server: IntakeServer, submitted_log: SubmittedLog
) -> None:
    request = _oversized_request()
    while request.ByteSize() > SIZE_LIMIT:
        request.referral.victims.pop()
    assert request.ByteSize() > SIZE_LIMIT - 8 * 1024
    before = submitted_log.end_offsets()

    response = _submit_valid(intake_server, submitted_log, request)
    records = submitted_log.read_from(before, 1)

    assert response.duplicate is False
    assert [record.key for record in records] == [response.referral_id.encode()]
    assert len(records[0].value) > SIZE_LIMIT - 8 * 1024


def test_accepted_record_carries_cloudevents_headers_trace_and_referral_id_key(
    intake_server: IntakeServer, submitted_log: SubmittedLog
) -> None:
    request = valid_request()
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    before = submitted_log.end_offsets()
    started = datetime.now(UTC)

    response = _submit_valid(
        intake_server,
        submitted_log,
        request,
        metadata=[("traceparent", f"00-{trace_id}-{parent_id}-01")],
    )
    records = submitted_log.read_from(before, 1)

    assert len(records) == 1
    record = records[0]
    assert record.key == response.referral_id.encode()
    assert response.referral_id
    assert len(response.referral_id) <= 64
    assert response.duplicate is False

    uuid.UUID(_header(record, "ce_id"))
    assert _header(record, "ce_source") == intake_server.source
    assert _header(record, "ce_type") == "ctroute.referral.v1.ReferralSubmitted"
    assert _header(record, "ce_specversion") == "1.0"
    assert _header(record, "content-type") == "application/protobuf"
    ce_time = datetime.fromisoformat(_header(record, "ce_time"))
    assert ce_time.tzinfo is not None
    assert started - timedelta(seconds=5) <= ce_time <= datetime.now(UTC) + timedelta(seconds=5)
    traceparent = _header(record, "traceparent")
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", traceparent), traceparent
    assert traceparent.split("-")[1] == trace_id, "the record does not continue the caller's trace"

    event = lifecycle_pb2.ReferralSubmitted.FromString(record.value)
    assert event.submitted_by == SOURCE
    assert event.referral.referral_id == response.referral_id
    assert event.referral.received_at == response.received_at
    expected = R.Referral()
    expected.CopyFrom(request.referral)
    expected.referral_id = response.referral_id
    expected.received_at.CopyFrom(response.received_at)
    assert event.referral == expected


def test_resubmitting_the_same_source_reference_returns_the_first_id_and_publishes_nothing(
    intake_server: IntakeServer, submitted_log: SubmittedLog
) -> None:
    reference = _reference()
    before = submitted_log.end_offsets()
    first = _submit_valid(intake_server, submitted_log, valid_request(reference))
    assert [r.key for r in submitted_log.read_from(before, 1)] == [first.referral_id.encode()]
    after_first = submitted_log.end_offsets()
    assert _total(after_first) == _total(before) + 1

    again = valid_request(reference)
    again.referral.narrative = "A corrected account, sent again by mistake."
    second = _submit(intake_server, again)

    assert first.duplicate is False
    assert second.duplicate is True
    assert second.referral_id == first.referral_id
    assert second.received_at == first.received_at
    assert submitted_log.end_offsets() == after_first, "a duplicate was published again"


def test_no_invalid_submission_reached_kafka_and_a_valid_one_does(
    intake_server: IntakeServer, submitted_log: SubmittedLog
) -> None:
    """Runs last: every record since this module began belongs to an accepted submission."""
    before = submitted_log.end_offsets()

    response = _submit_valid(intake_server, submitted_log, valid_request())
    arrived = submitted_log.read_from(before, 1)

    assert [r.key for r in arrived] == [response.referral_id.encode()], "the valid one is missing"
    end = submitted_log.end_offsets()
    assert _total(end) == _total(before) + 1
    since_start = _total(end) - _total(submitted_log.baseline)
    records = submitted_log.read_from(submitted_log.baseline, since_start)
    keys = [record.key.decode() for record in records]
    assert len(keys) == since_start
    strays = set(keys) - submitted_log.accepted
    assert not strays, f"records of referrals the intake rejected: {strays}"
    assert len(keys) == len(set(keys)), "an accepted referral was published twice"
