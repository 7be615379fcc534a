"""Request validation against the constraints declared in the contract (protovalidate).

Violations name the field path (`referral.victims[1].age`) and a reason taken from the rule,
never the offending value, so an error message cannot leak personal data.

Besides the declared rules, every `google.protobuf.Timestamp` in a message must be a valid one:
0001-01-01 to 9999-12-31 with nanos in 0..999,999,999, as the well-known type defines it.
protovalidate does not check this without a rule, and an out-of-range timestamp cannot be turned
into a datetime or JSON: accepted, it would fail later (in the intake's span attributes, or in
the router, which would park a referral the caller was told was accepted).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import protovalidate
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

_validator = protovalidate.Validator()


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule: where, and why in words a person understands."""

    field: str
    reason: str
    rule_id: str

    def __str__(self) -> str:
        return f"{self.field or '(request)'}: {self.reason}"


def _format_path(path: Any) -> str:
    parts: list[str] = []
    for element in path.elements:
        name = element.field_name
        subscript = element.subscript
        if subscript is not None:
            which = getattr(subscript, "field", None)
            value = getattr(subscript, "value", None)
            if which == "index":
                name += f"[{value}]"
            elif which is not None:
                name += f"[{value!r}]"
        parts.append(name)
    return ".".join(parts)


TIMESTAMP_RULE = "timestamp.valid"
TIMESTAMP_REASON = "must be a valid timestamp: from 0001-01-01 to 9999-12-31, nanos 0 to 999999999"
_FIRST_SECOND, _LAST_SECOND = -62_135_596_800, 253_402_300_799  # 0001-01-01, 9999-12-31T23:59:59


def _invalid_timestamps(message: Message, prefix: str = "") -> Iterator[FieldViolation]:
    """A violation for every Timestamp field outside the range its type defines."""
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue  # the contract has no maps; a map key could be personal data in a path
        path = f"{prefix}{field.name}"
        items = list(value) if field.is_repeated else [value]
        for index, item in enumerate(items):
            where = f"{path}[{index}]" if field.is_repeated else path
            if isinstance(item, Timestamp):
                seconds, nanos = item.seconds, item.nanos
                if not (_FIRST_SECOND <= seconds <= _LAST_SECOND and 0 <= nanos <= 999_999_999):
                    yield FieldViolation(where, TIMESTAMP_REASON, TIMESTAMP_RULE)
            else:
                yield from _invalid_timestamps(item, f"{where}.")


def violations_of(message: Message) -> list[FieldViolation]:
    """Every violation of the message's declared constraints, in declaration order."""
    try:
        found = _validator.collect_violations(message)
    except protovalidate.EvaluationError:
        # A rule that could not be evaluated means the input was outside what the rule expects.
        # The evaluator's own text can quote input values, so it is not passed on.
        return [
            FieldViolation(
                "", "the request could not be checked against the contract", "evaluation"
            )
        ]
    result = []
    for violation in found:
        proto = violation.proto
        path = _format_path(proto.field) if proto.has_field("field") else ""
        result.append(FieldViolation(path, proto.message or proto.rule_id, proto.rule_id))
    result.extend(_invalid_timestamps(message))
    return result
