"""Redaction and scrubbing driven by the sensitivity classes declared in the contract.

No list of sensitive fields is kept by hand anywhere: every field's class is read from its
descriptor. A field is released to a reader only if its own class and the classes of every
message field above it are released; a victim's identity fields are released per victim.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from plumbing import contract


@functools.cache
def _sensitivity_extension() -> Any:
    contract.load()
    from ctroute.options.v1 import sensitivity_pb2

    return sensitivity_pb2.sensitivity


def _sensitivity_enum() -> Any:
    from ctroute.options.v1 import sensitivity_pb2

    return sensitivity_pb2


_CLASS_OF_FIELD: dict[str, int] = {}
"""Field full name -> declared class: redaction asks for every field of every partner's copy,
and reading the option from the descriptor each time was a visible share of the router's CPU."""


def sensitivity_of(field: FieldDescriptor) -> int:
    """The field's declared class (0 means unclassified, which the contract test forbids)."""
    declared = _CLASS_OF_FIELD.get(field.full_name)
    if declared is None:
        declared = int(field.GetOptions().Extensions[_sensitivity_extension()])
        _CLASS_OF_FIELD[field.full_name] = declared
    return declared


@functools.cache
def _victim_identity() -> int:
    return int(_sensitivity_enum().SENSITIVITY_VICTIM_IDENTITY)


def class_name(value: int) -> str:
    """A class's short name, e.g. VICTIM_IDENTITY."""
    name: str = _sensitivity_enum().Sensitivity.Name(value)
    return name.removeprefix("SENSITIVITY_")


def class_value(name: str) -> int:
    """A class's enum value from its short name, e.g. "VICTIM_IDENTITY"."""
    return int(_sensitivity_enum().Sensitivity.Value(f"SENSITIVITY_{name}"))


def iter_fields(descriptor: Descriptor) -> Iterator[tuple[str, FieldDescriptor]]:
    """Every field reachable from a message type, with its dotted path; each type once."""
    seen: set[str] = set()

    def walk(desc: Descriptor, prefix: str) -> Iterator[tuple[str, FieldDescriptor]]:
        if desc.full_name in seen:
            return
        seen.add(desc.full_name)
        for field in desc.fields:
            path = f"{prefix}{field.name}"
            yield path, field
            if field.message_type is not None and field.message_type.full_name.startswith(
                "ctroute."
            ):
                yield from walk(field.message_type, path + ".")

    yield from walk(descriptor, "")


VictimRule = Callable[[Message], bool]


def redact(
    message: Message,
    released: Collection[int],
    *,
    victim_identity_released: VictimRule = lambda _victim: False,
) -> Message:
    """A copy of `message` holding only released fields; withheld fields are absent.

    `released` are the class values the reader may receive. VICTIM_IDENTITY is decided per
    victim by `victim_identity_released`, called with each PotentialVictim message.
    """
    copy = type(message)()
    copy.CopyFrom(message)
    _strip(copy, frozenset(released), victim_identity_released, identity_ok=False)
    return copy


def _strip(
    message: Message, released: frozenset[int], victim_rule: VictimRule, *, identity_ok: bool
) -> None:
    identity = _victim_identity()
    if message.DESCRIPTOR.full_name == "ctroute.referral.v1.PotentialVictim":
        identity_ok = victim_rule(message)
    for field, value in message.ListFields():
        cls = sensitivity_of(field)
        allowed = identity_ok if cls == identity else cls in released
        if not allowed:
            message.ClearField(field.name)
            continue
        nested = field.message_type
        if nested is None or not nested.full_name.startswith("ctroute."):
            continue
        children = value if field.is_repeated else [value]
        for child in children:
            _strip(child, released, victim_rule, identity_ok=identity_ok)


def operational_view(message: Message) -> dict[str, Any]:
    """Only the OPERATIONAL fields of a message, as a dict safe for logs and span attributes."""
    from google.protobuf.json_format import MessageToDict

    operational = class_value("OPERATIONAL")
    return MessageToDict(redact(message, {operational}), preserving_proto_field_name=True)


def span_attributes(message: Message, prefix: str) -> dict[str, Any]:
    """Flat span attributes from a message's OPERATIONAL fields only (ids, source, indicators,
    counts), so traces are searchable without ever carrying personal data."""
    attributes: dict[str, Any] = {}

    def flatten(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(inner, f"{path}.{key}")
        elif isinstance(value, list):
            if all(isinstance(item, str | int | float | bool) for item in value):
                attributes[path] = value
            else:
                attributes[f"{path}.count"] = len(value)
        else:
            attributes[path] = value

    flatten(operational_view(message), prefix)
    return attributes
