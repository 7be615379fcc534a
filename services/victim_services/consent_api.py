"""The victim-services consent API (gRPC) and the adapters behind it: the consent book in SQLite
and the publisher of consent events.

A victim specialist records a victim's consent decision here (`refctl consent grant|withdraw`
calls it). The request is checked against the contract, then by the consent domain (a victim
victim services has a case for, a time-limited consent); the event is published on the submitted
topic keyed by the referral id (so the router sees it in order with the referral's other events)
and only once Kafka has it is the decision written to the book: a failed publish records
nothing, and a retried call publishes the same event id again, which the router skips.

Consent events come from victim services and not from an operator tool on purpose: in a secured
deployment only this service's principal may write consent events, and the book here stays the
one record of what each victim decided.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.message import Message

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from ctroute.referral.v1 import lifecycle_pb2, referral_pb2
from plumbing import topics
from plumbing.grpc_server import abort_invalid
from plumbing.kafka import EventPublisher
from plumbing.store import KeyedStore
from plumbing.validation import violations_of
from victim_services.domain.consent import (
    ConsentGrant,
    ConsentRecord,
    ConsentRefused,
    ConsentScope,
    ConsentWithdrawal,
    after_grant,
    after_withdrawal,
    grant_consent,
    record_key,
    withdraw_consent,
)

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 10.0

Clock = Callable[[], datetime]
Publish = Callable[[str, Message, str], None]
"""publish(key, event, event_id) on the submitted topic; returns once Kafka has the event."""


class ConsentBook:
    """Consent records per referral, victim and scope, and the victims known per referral."""

    def __init__(self, consents: KeyedStore, victims: KeyedStore) -> None:
        self._consents = consents
        self._victims = victims
        self._lock = threading.Lock()

    def known_victims(self, referral_id: str) -> frozenset[str]:
        record = self._victims.get(referral_id)
        return frozenset(record["victim_refs"]) if record else frozenset()

    def learn_victims(self, referral_id: str, victim_refs: frozenset[str]) -> None:
        """Remember the victims a delivered copy named (the desk's thread calls this)."""
        with self._lock:
            known = self.known_victims(referral_id)
            if not victim_refs <= known:
                self._victims.put(referral_id, {"victim_refs": sorted(known | victim_refs)})

    def close(self) -> None:
        self._consents.close()
        self._victims.close()

    def record(
        self, key: str, change: Callable[[ConsentRecord | None], ConsentRecord]
    ) -> ConsentRecord:
        """Apply ``change`` to the record under ``key`` and store the result."""
        with self._lock:
            stored = self._consents.get(key)
            updated = change(ConsentRecord.from_record(stored) if stored else None)
            self._consents.put(key, updated.as_record())
            return updated


def kafka_publish(publisher: EventPublisher) -> Publish:
    """Publish on the submitted topic and wait for the broker's acknowledgement."""

    def publish(key: str, event: Message, event_id: str) -> None:
        publisher.publish(topics.SUBMITTED, key, event, event_id=event_id).get(
            timeout=PUBLISH_TIMEOUT_SECONDS
        )

    return publish


def granted_event(grant: ConsentGrant) -> lifecycle_pb2.ConsentGranted:
    event = lifecycle_pb2.ConsentGranted(referral_id=grant.referral_id, victim_ref=grant.victim_ref)
    event.consent.scope = _scope_value(grant.scope)
    event.consent.granted_at.FromDatetime(grant.granted_at)
    event.consent.expires_at.FromDatetime(grant.expires_at)
    return event


def withdrawn_event(withdrawal: ConsentWithdrawal) -> lifecycle_pb2.ConsentWithdrawn:
    event = lifecycle_pb2.ConsentWithdrawn(
        referral_id=withdrawal.referral_id,
        victim_ref=withdrawal.victim_ref,
        scope=_scope_value(withdrawal.scope),
    )
    event.withdrawn_at.FromDatetime(withdrawal.withdrawn_at)
    return event


class VictimConsentApi(delivery_pb2_grpc.VictimConsentServiceServicer):
    """VictimConsentService over the consent domain, the book and the publisher."""

    def __init__(self, book: ConsentBook, publish: Publish, clock: Clock) -> None:
        self._book = book
        self._publish = publish
        self._clock = clock

    def GrantConsent(
        self, request: delivery_pb2.GrantConsentRequest, context: grpc.ServicerContext
    ) -> delivery_pb2.GrantConsentResponse:
        _check(request, context)
        try:
            grant = grant_consent(
                referral_id=request.referral_id,
                victim_ref=request.victim_ref,
                scope=_scope(request.scope),
                expires_at=request.expires_at.ToDatetime(tzinfo=UTC),
                granted_at=(
                    request.granted_at.ToDatetime(tzinfo=UTC)
                    if request.HasField("granted_at")
                    else None
                ),
                known_victims=self._book.known_victims(request.referral_id),
                now=self._clock(),
            )
        except ConsentRefused as refused:
            _abort_refused(context, refused)
            raise AssertionError("unreachable") from refused
        event = granted_event(grant)
        self._send(context, grant.referral_id, event, grant.event_id)
        self._book.record(
            record_key(grant.referral_id, grant.victim_ref, grant.scope),
            lambda previous: after_grant(previous, grant),
        )
        log.info(
            "consent %s of %s on %s recorded", grant.scope, grant.victim_ref, grant.referral_id
        )
        return delivery_pb2.GrantConsentResponse(event_id=grant.event_id, consent=event.consent)

    def WithdrawConsent(
        self, request: delivery_pb2.WithdrawConsentRequest, context: grpc.ServicerContext
    ) -> delivery_pb2.WithdrawConsentResponse:
        _check(request, context)
        try:
            withdrawal = withdraw_consent(
                referral_id=request.referral_id,
                victim_ref=request.victim_ref,
                scope=_scope(request.scope),
                withdrawn_at=(
                    request.withdrawn_at.ToDatetime(tzinfo=UTC)
                    if request.HasField("withdrawn_at")
                    else None
                ),
                known_victims=self._book.known_victims(request.referral_id),
                now=self._clock(),
            )
        except ConsentRefused as refused:
            _abort_refused(context, refused)
            raise AssertionError("unreachable") from refused
        event = withdrawn_event(withdrawal)
        self._send(context, withdrawal.referral_id, event, withdrawal.event_id)
        self._book.record(
            record_key(withdrawal.referral_id, withdrawal.victim_ref, withdrawal.scope),
            lambda previous: after_withdrawal(previous, withdrawal),
        )
        log.info(
            "consent %s of %s on %s withdrawn",
            withdrawal.scope,
            withdrawal.victim_ref,
            withdrawal.referral_id,
        )
        response = delivery_pb2.WithdrawConsentResponse(event_id=withdrawal.event_id)
        response.withdrawn_at.CopyFrom(event.withdrawn_at)
        return response

    def _send(self, context: grpc.ServicerContext, key: str, event: Message, event_id: str) -> None:
        try:
            self._publish(key, event, event_id)
        except Exception as error:
            # Nothing is recorded: the caller retries, and the same event id is published again.
            log.error("publishing %s failed: %s", event_id, type(error).__name__)
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the consent could not be published; nothing was recorded, try again",
            )


def _scope(value: referral_pb2.ConsentScope.ValueType) -> ConsentScope:
    return ConsentScope(referral_pb2.ConsentScope.Name(value).removeprefix("CONSENT_SCOPE_"))


def _scope_value(scope: ConsentScope) -> referral_pb2.ConsentScope.ValueType:
    return referral_pb2.ConsentScope.Value(f"CONSENT_SCOPE_{scope.value}")


def _check(request: Message, context: grpc.ServicerContext) -> None:
    violations = violations_of(request)
    if violations:
        abort_invalid(context, violations)


def _abort_refused(context: grpc.ServicerContext, refused: ConsentRefused) -> None:
    code = grpc.StatusCode.NOT_FOUND if refused.unknown_victim else grpc.StatusCode.INVALID_ARGUMENT
    context.abort(code, refused.reason)
