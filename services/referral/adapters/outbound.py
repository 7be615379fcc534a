"""Records the router wants published, built independently of the Kafka client that sends them."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from plumbing.envelope import Headers, event_headers
from plumbing.telemetry import inject_trace_context


@dataclass(frozen=True)
class OutboundRecord:
    """One Kafka record ready to send: topic, key, value and headers (a dead letter keeps the
    consumed record's key and value byte for byte, null included)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def outbound(topic: str, key: str, event: Message, *, source: str, event_id: str) -> OutboundRecord:
    """Build a record with CloudEvents headers and the current trace context.

    The router's consume loop sends a consumed record's outputs under one `publish` span and
    stamps that span's context on each of them (``plumbing.telemetry.restamp_trace_context``),
    so the partner's consumer span continues the same trace.
    """
    headers = event_headers(event, source=source, event_id=event_id)
    inject_trace_context(headers)
    return OutboundRecord(topic, key.encode(), event.SerializeToString(), headers)
