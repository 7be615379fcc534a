"""Records the router wants published, built independently of the Kafka client that sends them."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from plumbing.envelope import Headers, event_headers
from plumbing.telemetry import inject_trace_context

_tracer = trace.get_tracer("ctroute.referral.router")


@dataclass(frozen=True)
class OutboundRecord:
    """One Kafka record ready to send: topic, key, value and headers (a dead letter keeps the
    consumed record's key and value byte for byte, null included)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def outbound(topic: str, key: str, event: Message, *, source: str, event_id: str) -> OutboundRecord:
    """Build a record with CloudEvents headers and the trace context of a `<topic> publish` span.

    The publish span is a child of the current (consumer) span, and the record carries its
    context, so the partner's consumer span continues the same trace.
    """
    with _tracer.start_as_current_span(
        f"{topic} publish",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "publish",
            "messaging.destination.name": topic,
            "messaging.kafka.message.key": key,
            "cloudevents.event_id": event_id,
            "cloudevents.event_type": event.DESCRIPTOR.full_name,
        },
    ):
        headers = event_headers(event, source=source, event_id=event_id)
        inject_trace_context(headers)
    return OutboundRecord(topic, key.encode(), event.SerializeToString(), headers)
