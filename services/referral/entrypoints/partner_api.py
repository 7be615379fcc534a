"""The partner status API (gRPC): a partner reports progress on its own deliveries.

A thin translator over the lifecycle tracker. An illegal transition is FAILED_PRECONDITION, a
report on another partner's delivery PERMISSION_DENIED, an unknown delivery NOT_FOUND; each
refusal is also recorded as a DeliveryStatusRejected event.

With an authenticator (always, outside local test fixtures) the partner is who its token proves:
a call without valid credentials is UNAUTHENTICATED, and one naming another partner is
PERMISSION_DENIED. Without one, the partner named in the request is taken at its word.
"""

from __future__ import annotations

import uuid

import grpc

from ctroute.partner.v1 import delivery_pb2, delivery_pb2_grpc
from plumbing.grpc_auth import TokenAuthenticator
from plumbing.grpc_server import abort_invalid
from plumbing.validation import violations_of
from referral.domain.lifecycle import Accepted, Rejected
from referral.tracker import LifecycleTracker, state_value


class PartnerStatusApi(delivery_pb2_grpc.PartnerStatusServiceServicer):
    """PartnerStatusService over the lifecycle tracker."""

    def __init__(
        self, tracker: LifecycleTracker, authenticator: TokenAuthenticator | None = None
    ) -> None:
        self._tracker = tracker
        self._authenticator = authenticator

    def _partner(
        self, request: delivery_pb2.ReportDeliveryStatusRequest, context: grpc.ServicerContext
    ) -> str:
        if self._authenticator is None:
            return request.partner
        caller = self._authenticator.identity(context)
        if request.partner != caller:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"authenticated as {caller}: report as yourself (partner {caller!r})",
            )
        return caller

    def ReportDeliveryStatus(
        self, request: delivery_pb2.ReportDeliveryStatusRequest, context: grpc.ServicerContext
    ) -> delivery_pb2.ReportDeliveryStatusResponse:
        partner = self._partner(request, context)
        violations = violations_of(request)
        if violations:
            abort_invalid(context, violations)
        outcome, delivery = self._tracker.report(partner, request, f"api-{uuid.uuid4().hex}")
        if isinstance(outcome, Rejected):
            if delivery is None:
                code = grpc.StatusCode.NOT_FOUND
            elif delivery.partner != partner:
                code = grpc.StatusCode.PERMISSION_DENIED
            else:
                code = grpc.StatusCode.FAILED_PRECONDITION
            context.abort(code, outcome.reason)
        assert delivery is not None
        state = outcome.delivery.state if isinstance(outcome, Accepted) else delivery.state
        return delivery_pb2.ReportDeliveryStatusResponse(state=state_value(state))
