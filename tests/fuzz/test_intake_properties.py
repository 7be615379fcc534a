"""Property-based tests of the gRPC intake under bad input.

In-process (fast, 10,000 generated inputs): every request a client can send — valid, valid with
one thing broken, arbitrary field values, or raw bytes (mutated or random) for the transport to
parse — goes through protovalidate and the real `ReferralIntake.SubmitReferral` with a recording
publisher and an in-memory ledger (`devstack.fuzz`, shared with the coverage-guided fuzzer). The
properties, checked by `devstack.fuzz.check_intake`:

- `violations_of` never raises;
- every violation names a field path made of field names and indexes (or is a request-level
  rule), has a non-empty reason, and the reason never contains a value of the request that is at
  least 4 characters long (unless that text is part of the rule itself: "must be", "10000");
- an invalid request is answered INVALID_ARGUMENT (with a BadRequest detail listing every
  violation, or naming the 512 KiB limit) and NOTHING is published;
- a request with no violations is published exactly once, as a decodable ReferralSubmitted keyed
  by the referral id the caller is told, and the router routes that record (a referral parked in
  dead letters after its source heard "accepted" would reach no partner).

Through the real server and broker (`intake_server`): 500+ generated invalid requests are each
answered INVALID_ARGUMENT with BadRequest details, one over 4 MiB is refused RESOURCE_EXHAUSTED
by the transport, and the submitted topic's end offsets do not move.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import Phase, event, example, given, settings

from ctroute.referral.v1 import intake_pb2
from devstack.fuzz import (
    check_intake,
    check_intake_bytes,
    echoed_values,
    rule_vocabulary,
)
from plumbing import topics
from plumbing.validation import violations_of
from referral.entrypoints.grpc_intake import MAX_REFERRAL_BYTES
from tests.fuzz import strategies
from tests.kafka_reading import end_offsets

if TYPE_CHECKING:
    from tests.integration.intake import IntakeServer


IN_PROCESS_EXAMPLES = 10_000
THROUGH_SERVER_EXAMPLES = 500
TRANSPORT_LIMIT = 4 * 1024 * 1024
RPC_TIMEOUT_S = 20.0

FUZZ = strategies.fuzz_settings(IN_PROCESS_EXAMPLES)


def test_every_request_is_rejected_cleanly_or_published_exactly_once() -> None:
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(strategies.submit_inputs())
    @example(strategies.oversized_request())
    def check(payload: intake_pb2.SubmitReferralRequest | bytes) -> None:
        if isinstance(payload, bytes):
            outcome = check_intake_bytes(payload)
            if outcome is None:
                outcomes["unparseable bytes"] += 1
                event("unparseable bytes")
                return
        else:
            outcome = check_intake(payload)
        if outcome.aborted is None:
            kind = "accepted"
        elif outcome.violations:
            kind = "invalid"
        else:
            kind = "too big"
        outcomes[kind] += 1
        event(kind)

    check()

    assert sum(outcomes.values()) >= IN_PROCESS_EXAMPLES, outcomes
    # The generators reach every outcome, not just the easy ones.
    assert outcomes["accepted"] >= 500, outcomes
    assert outcomes["invalid"] >= 3_000, outcomes
    assert outcomes["unparseable bytes"] >= 200, outcomes
    assert outcomes["too big"] >= 1, outcomes


def test_valid_requests_have_no_violations() -> None:
    """The base of every near-valid request is itself valid, so its one break is the cause."""

    @settings(FUZZ, max_examples=1_000)
    @given(strategies.valid_requests())
    def check(request: intake_pb2.SubmitReferralRequest) -> None:
        assert violations_of(request) == []

    check()


def test_a_broken_field_is_reported_at_its_path_without_its_value() -> None:
    """Near-valid requests: one rule broken, so at least one violation, none echoing values."""

    @settings(FUZZ, max_examples=2_000)
    @given(strategies.near_valid_requests())
    def check(request: intake_pb2.SubmitReferralRequest) -> None:
        violations = violations_of(request)
        assert violations, "the broken request passed validation"
        for violation in violations:
            assert violation.field.startswith("referral"), violation
            assert not echoed_values(request, violation.reason), violation

    check()


def test_the_echo_check_sees_an_echo() -> None:
    """The no-echo property is only as good as its detector: it must flag a real echo."""
    request = intake_pb2.SubmitReferralRequest()
    request.referral.victims.add(full_name="Maria Example-Lopez", age=-4711)
    assert echoed_values(request, "bad value 'Maria Example-Lopez'") == ["Maria Example-Lopez"]
    assert echoed_values(request, "age -4711 is out of range") == ["-4711"]
    # Text that is part of the rules themselves is not an echo.
    assert "10000" in rule_vocabulary()
    request.referral.narrative = "must be at most"
    assert echoed_values(request, "must be at most 20000 characters") == []


# --- through the real server ----------------------------------------------------------------------


def _invalid(request: intake_pb2.SubmitReferralRequest) -> bool:
    return request.ByteSize() > MAX_REFERRAL_BYTES or bool(violations_of(request))


@pytest.mark.broker
def test_generated_invalid_requests_through_the_real_server_never_reach_kafka(
    intake_server: IntakeServer,
) -> None:
    before = end_offsets(intake_server.bootstrap, topics.SUBMITTED)
    answered: Counter[str] = Counter()

    @settings(FUZZ, max_examples=THROUGH_SERVER_EXAMPLES, phases=[Phase.generate])
    @given(
        strategies.near_valid_requests().filter(_invalid)
        | strategies.edge_timestamp_requests().filter(_invalid)
        | strategies.arbitrary_requests().filter(_invalid)
    )
    def submit(request: intake_pb2.SubmitReferralRequest) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            intake_server.stub.SubmitReferral(request, timeout=RPC_TIMEOUT_S)
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        message = error.details() or ""
        assert message.startswith(("invalid request (", "request is ")), message
        assert not echoed_values(request, message)
        if request.ByteSize() > MAX_REFERRAL_BYTES:
            assert "512 KiB" in message
            answered["too big"] += 1
            return
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None, "no google.rpc.Status details"
        bad_request = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad_request)
        assert bad_request.field_violations
        for violation in bad_request.field_violations:
            assert violation.field or violation.description, violation
            assert violation.description.strip()
            assert not echoed_values(request, violation.description)
        answered["invalid"] += 1

    submit()

    # Over 4 MiB the transport refuses the message before the servicer sees it.
    huge = intake_pb2.SubmitReferralRequest()
    huge.referral.source = "hsi-tipline"
    huge.referral.source_reference = "TIP-HUGE"
    huge.referral.narrative = "x" * (TRANSPORT_LIMIT + 1)
    with pytest.raises(grpc.RpcError) as caught:
        intake_server.stub.SubmitReferral(huge, timeout=RPC_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    answered["over 4 MiB"] += 1

    assert sum(answered.values()) >= THROUGH_SERVER_EXAMPLES + 1, answered
    assert end_offsets(intake_server.bootstrap, topics.SUBMITTED) == before, (
        "a rejected request reached Kafka"
    )
