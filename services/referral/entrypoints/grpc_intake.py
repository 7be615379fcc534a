"""The gRPC intake: component systems submit, amend and withdraw referrals here.

A thin translator: check the request against the contract, assign the referral id, and publish
the event; only when Kafka has acknowledged it (acks=all) does the caller hear "accepted".
Nothing invalid reaches Kafka, and errors name fields and rules, never values.

With an authenticator (always, outside local test fixtures) every call must prove which
component system makes it (UNAUTHENTICATED otherwise), and a system may only act as itself: a
request whose source is another system's is PERMISSION_DENIED.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import grpc
from google.protobuf.message import Message
from opentelemetry import trace

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc, lifecycle_pb2
from plumbing import topics
from plumbing.grpc_auth import TokenAuthenticator
from plumbing.grpc_server import abort_invalid
from plumbing.kafka import EventPublisher
from plumbing.sensitivity import span_attributes
from plumbing.validation import FieldViolation, violations_of
from referral.adapters.ledger import (
    IntakeLedger,
    LedgerEntry,
    amendment_event_id,
    referral_id_for,
)

log = logging.getLogger(__name__)

MAX_REFERRAL_BYTES = 512 * 1024
"""Documented limit on a serialized request; attachments travel by reference."""

PUBLISH_TIMEOUT_SECONDS = 10.0


# Rules declared on the `referral` field of the request are about one of its fields; name it.
_FIELD_OF_RULE = {
    "submit.referral_id_assigned_by_system": "referral.referral_id",
    "submit.received_at_set_by_system": "referral.received_at",
}


def _precise(violation: FieldViolation) -> FieldViolation:
    path = _FIELD_OF_RULE.get(violation.rule_id)
    return FieldViolation(path, violation.reason, violation.rule_id) if path else violation


def _check(request: Message, context: grpc.ServicerContext) -> None:
    size = request.ByteSize()
    if size > MAX_REFERRAL_BYTES:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request is {size} bytes; the limit is {MAX_REFERRAL_BYTES} bytes (512 KiB): "
            "send attachments by reference (referral.attachments[].uri), not inline",
        )
    violations = [_precise(v) for v in violations_of(request)]
    if violations:
        abort_invalid(context, violations)


class ReferralIntake(intake_pb2_grpc.ReferralIntakeServiceServicer):
    """ReferralIntakeService over a Kafka publisher and the intake ledger."""

    def __init__(
        self,
        publisher: EventPublisher,
        ledger: IntakeLedger,
        authenticator: TokenAuthenticator | None = None,
    ) -> None:
        self._publisher = publisher
        self._ledger = ledger
        self._authenticator = authenticator

    def _authorize(self, context: grpc.ServicerContext, source: str) -> None:
        """End the call unless the caller is authenticated as `source` (when authenticating)."""
        if self._authenticator is None:
            return
        caller = self._authenticator.identity(context)
        if caller != source:
            log.warning("refused a request from %s naming another source", caller)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"authenticated as {caller} but the request's source is {source!r}: a system "
                "may only submit, amend or withdraw as itself",
            )

    def _publish(
        self,
        context: grpc.ServicerContext,
        key: str,
        event: Message,
        *,
        event_id: str | None = None,
        retry_safe: bool = True,
    ) -> None:
        try:
            self._publisher.publish(topics.SUBMITTED, key, event, event_id=event_id).get(
                timeout=PUBLISH_TIMEOUT_SECONDS
            )
        except Exception as error:
            log.error("publishing to %s failed: %s", topics.SUBMITTED, type(error).__name__)
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the referral could not be handed to Kafka, so it was NOT accepted; "
                + (
                    "retry the same request (it is safe: duplicates are recognised)"
                    if retry_safe
                    else "retry with an amendment_reference, so that a retry of an amendment "
                    "that did arrive is recognised instead of delivered twice"
                ),
            )

    def SubmitReferral(
        self, request: intake_pb2.SubmitReferralRequest, context: grpc.ServicerContext
    ) -> intake_pb2.SubmitReferralResponse:
        self._authorize(context, request.referral.source)
        _check(request, context)
        referral = request.referral
        trace.get_current_span().set_attributes(span_attributes(referral, "ctroute.referral"))
        existing = self._ledger.find(referral.source, referral.source_reference)
        if existing is not None:
            response = intake_pb2.SubmitReferralResponse(
                referral_id=existing.referral_id, duplicate=True
            )
            response.received_at.FromDatetime(existing.received_at)
            return response
        entry = LedgerEntry(
            referral_id_for(referral.source, referral.source_reference), datetime.now(UTC)
        )
        event = lifecycle_pb2.ReferralSubmitted(submitted_by=referral.source)
        event.referral.CopyFrom(referral)
        event.referral.referral_id = entry.referral_id
        event.referral.received_at.FromDatetime(entry.received_at)
        self._publish(context, entry.referral_id, event)
        self._ledger.record(referral.source, referral.source_reference, entry)
        log.info("accepted referral %s from %s", entry.referral_id, referral.source)
        response = intake_pb2.SubmitReferralResponse(referral_id=entry.referral_id)
        response.received_at.FromDatetime(entry.received_at)
        return response

    def _owned_referral(
        self, context: grpc.ServicerContext, referral_id: str, source: str
    ) -> tuple[str, str]:
        known = self._ledger.find_by_id(referral_id)
        if known is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no referral with id {referral_id}")
            raise AssertionError("unreachable")
        if known[0] != source:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"referral {referral_id} was submitted by another source; only it may change it",
            )
        return known

    def AmendReferral(
        self, request: intake_pb2.AmendReferralRequest, context: grpc.ServicerContext
    ) -> intake_pb2.AmendReferralResponse:
        self._authorize(context, request.referral.source)
        _check(request, context)
        _, source_reference = self._owned_referral(
            context, request.referral_id, request.referral.source
        )
        if request.referral.source_reference != source_reference:
            abort_invalid(
                context,
                [
                    FieldViolation(
                        "referral.source_reference",
                        "must match the original referral's source_reference",
                        "amend.same_source_reference",
                    )
                ],
            )
        event = lifecycle_pb2.ReferralAmended(reason=request.reason)
        event.referral.CopyFrom(request.referral)
        event.referral.referral_id = request.referral_id
        event.referral.received_at.FromDatetime(datetime.now(UTC))
        # The event id is the amendment's revision for the router: derived from the source's
        # reference, a retried amendment is recognised and delivered once.
        event_id = (
            amendment_event_id(request.referral_id, request.amendment_reference)
            if request.amendment_reference
            else None
        )
        self._publish(
            context, request.referral_id, event, event_id=event_id, retry_safe=event_id is not None
        )
        return intake_pb2.AmendReferralResponse(referral_id=request.referral_id)

    def WithdrawReferral(
        self, request: intake_pb2.WithdrawReferralRequest, context: grpc.ServicerContext
    ) -> intake_pb2.WithdrawReferralResponse:
        self._authorize(context, request.source)
        _check(request, context)
        self._owned_referral(context, request.referral_id, request.source)
        event = lifecycle_pb2.ReferralWithdrawn(
            referral_id=request.referral_id, reason=request.reason
        )
        self._publish(context, request.referral_id, event)
        return intake_pb2.WithdrawReferralResponse(referral_id=request.referral_id)
