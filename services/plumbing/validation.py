"""Request validation against the constraints declared in the contract (protovalidate).

Violations name the field path (`referral.victims[1].age`) and a reason taken from the rule,
never the offending value, so an error message cannot leak personal data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import protovalidate
from google.protobuf.message import Message

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
    return result
