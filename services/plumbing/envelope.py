"""CloudEvents binary-mode envelope for protobuf events on Kafka.

Each record's value is the protobuf bytes of one event; its headers say what it is (`ce_type`,
the message's full name), who published it (`ce_source`), its id and time. A partner in any
language can decode a record from the `.proto` files and these headers alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from plumbing import contract

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/protobuf"
CONTRACT_PACKAGE_PREFIX = "ctroute."

Headers = list[tuple[str, bytes]]


class EnvelopeError(ValueError):
    """A record whose headers or value do not form a valid event; it belongs in dead letters."""


@dataclass(frozen=True)
class Envelope:
    """The CloudEvents attributes of one record."""

    event_id: str
    event_type: str
    source: str
    time: datetime


def event_headers(
    message: Message, *, source: str, event_id: str | None = None, time: datetime | None = None
) -> Headers:
    """The CloudEvents headers for publishing `message` from service `source`."""
    when = time or datetime.now(UTC)
    return [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", (event_id or str(uuid.uuid4())).encode()),
        ("ce_source", source.encode()),
        ("ce_type", message.DESCRIPTOR.full_name.encode()),
        ("ce_time", when.isoformat(timespec="microseconds").encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]


def header_value(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """The last value of header `name`, decoded, or None."""
    found: str | None = None
    for key, value in headers or ():
        if key == name and value is not None:
            found = value.decode("utf-8", errors="replace")
    return found


def read_envelope(headers: Sequence[tuple[str, bytes | None]] | None) -> Envelope:
    """The envelope of a record; raises EnvelopeError naming the missing or bad header."""
    values = {}
    for name in ("ce_id", "ce_type", "ce_source", "ce_time", "ce_specversion"):
        value = header_value(headers, name)
        if not value:
            raise EnvelopeError(f"header {name} is missing")
        values[name] = value
    if values["ce_specversion"] != SPEC_VERSION:
        raise EnvelopeError(f"header ce_specversion is {values['ce_specversion']!r}, expected 1.0")
    try:
        time = datetime.fromisoformat(values["ce_time"])
    except ValueError as error:
        raise EnvelopeError("header ce_time is not an RFC 3339 timestamp") from error
    return Envelope(values["ce_id"], values["ce_type"], values["ce_source"], time)


def message_class(event_type: str) -> type[Message]:
    """The generated class for a contract message's full name."""
    if not event_type.startswith(CONTRACT_PACKAGE_PREFIX):
        raise EnvelopeError(f"event type {event_type!r} is not part of the ctroute contract")
    contract.load()
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(event_type)
    except KeyError as error:
        raise EnvelopeError(f"unknown event type {event_type!r}") from error
    return message_factory.GetMessageClass(descriptor)


def decode_event(
    headers: Sequence[tuple[str, bytes | None]] | None, value: bytes | None
) -> tuple[Envelope, Message]:
    """Decode one record into its envelope and event message, or raise EnvelopeError."""
    envelope = read_envelope(headers)
    cls = message_class(envelope.event_type)
    if value is None:
        raise EnvelopeError("record has no value")
    event = cls()
    try:
        event.ParseFromString(value)
    except DecodeError as error:
        raise EnvelopeError(f"value is not a valid {envelope.event_type}") from error
    return envelope, event
