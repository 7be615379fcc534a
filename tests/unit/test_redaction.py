"""Redaction by sensitivity class: a partner's copy holds only what the partner may receive.

The referral below is filled generically from its descriptors, with a distinct canary string in
every string field, so a field added to the contract is covered without editing this test. The
expected outcome follows the documented rule: a field is released only if its own class and the
class of every message field above it are released; a victim's identity is released per victim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ctroute.options.v1 import sensitivity_pb2 as S
from ctroute.referral.v1 import referral_pb2
from plumbing.sensitivity import operational_view, redact, sensitivity_of

OPERATIONAL = S.SENSITIVITY_OPERATIONAL
VICTIM_NEEDS = S.SENSITIVITY_VICTIM_NEEDS
VICTIM_IDENTITY = S.SENSITIVITY_VICTIM_IDENTITY
NGO_PROFILE = frozenset({OPERATIONAL, VICTIM_NEEDS})


@dataclass(frozen=True)
class Canary:
    value: str
    path: str
    classes: tuple[int, ...]  # the class of every field from the referral down to the string
    victim: int | None  # index in referral.victims, when the string belongs to a victim

    def released(self, classes: frozenset[int], victims: frozenset[int] = frozenset()) -> bool:
        return all(
            cls in classes or (cls == VICTIM_IDENTITY and self.victim in victims)
            for cls in self.classes
        )


class _Filler:
    """Sets every field of a message, recursively; each string gets a distinct canary."""

    def __init__(self) -> None:
        self.canaries: list[Canary] = []

    def _canary(self, path: str, classes: tuple[int, ...], victim: int | None) -> str:
        value = f"CANARY{len(self.canaries):04d}Z"  # fixed width: none is inside another
        self.canaries.append(Canary(value, path, classes, victim))
        return value

    def fill(
        self,
        message: Message,
        path: str = "",
        classes: tuple[int, ...] = (),
        victim: int | None = None,
    ) -> None:
        for field in message.DESCRIPTOR.fields:
            here = (*classes, sensitivity_of(field))
            name = f"{path}{field.name}"
            repeated = field.is_repeated
            for index in range(2 if repeated else 1):
                item_path = f"{name}[{index}]" if repeated else name
                item_victim = index if name == "victims" else victim
                self._fill_one(message, field, repeated, item_path, here, item_victim)

    def _fill_one(
        self,
        message: Message,
        field: FieldDescriptor,
        repeated: bool,
        path: str,
        classes: tuple[int, ...],
        victim: int | None,
    ) -> None:
        container = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            child = container.add() if repeated else container
            if field.message_type.full_name == "google.protobuf.Timestamp":
                child.seconds = 1_700_000_000
            else:
                self.fill(child, path + ".", classes, victim)
            return
        if field.type == FieldDescriptor.TYPE_STRING:
            value: Any = self._canary(path, classes, victim)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            value = field.enum_type.values[1].number
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif field.type == FieldDescriptor.TYPE_DOUBLE:
            value = 12.5
        else:
            value = 7
        if repeated:
            container.append(value)
        else:
            setattr(message, field.name, value)


@pytest.fixture
def filled() -> tuple[referral_pb2.Referral, list[Canary]]:
    filler = _Filler()
    referral = referral_pb2.Referral()
    filler.fill(referral)
    referral.victims[0].victim_ref = "v1"
    referral.victims[1].victim_ref = "v2"
    canaries = [c for c in filler.canaries if not c.path.endswith(".victim_ref")]
    return referral, canaries


def _canary_of(canaries: list[Canary], path: str) -> str:
    return next(c.value for c in canaries if c.path == path)


def _set_fields_outside(
    message: Message,
    released: frozenset[int],
    victims: frozenset[str],
    path: str = "",
    identity_ok: bool = False,
) -> list[str]:
    """Paths of the fields set in `message` whose class the reader may not receive."""
    wrong: list[str] = []
    if message.DESCRIPTOR.full_name == "ctroute.referral.v1.PotentialVictim":
        identity_ok = message.victim_ref in victims  # type: ignore[attr-defined]
    for field, value in message.ListFields():
        cls = sensitivity_of(field)
        if cls not in released and not (cls == VICTIM_IDENTITY and identity_ok):
            wrong.append(path + field.name)
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name.startswith(
            "ctroute."
        ):
            children = value if field.is_repeated else [value]
            for child in children:
                wrong += _set_fields_outside(
                    child, released, victims, f"{path}{field.name}.", identity_ok
                )
    return wrong


# --- the generic fill itself -------------------------------------------------------------------


def test_every_string_field_of_the_referral_carries_a_canary(
    filled: tuple[referral_pb2.Referral, list[Canary]],
) -> None:
    referral, canaries = filled
    data = referral.SerializeToString()
    assert len(canaries) > 60
    assert all(c.value.encode() in data for c in canaries)
    classes = {cls for c in canaries for cls in c.classes}
    assert classes == set(S.Sensitivity.values()) - {S.SENSITIVITY_UNSPECIFIED}


# --- an NGO: OPERATIONAL and VICTIM_NEEDS only ---------------------------------------------


def test_ngo_copy_holds_victim_needs_and_no_other_sensitive_canary(
    filled: tuple[referral_pb2.Referral, list[Canary]],
) -> None:
    referral, canaries = filled
    copy = redact(referral, NGO_PROFILE)
    data = copy.SerializeToString()

    leaked = sorted(
        c.path for c in canaries if not c.released(NGO_PROFILE) and c.value.encode() in data
    )
    missing = sorted(
        c.path for c in canaries if c.released(NGO_PROFILE) and c.value.encode() not in data
    )
    assert not leaked, f"withheld strings in the NGO copy: {leaked}"
    assert not missing, f"released strings missing from the NGO copy: {missing}"

    needs = [c for c in canaries if VICTIM_NEEDS in c.classes and c.released(NGO_PROFILE)]
    assert {c.path for c in needs} >= {
        "victims[0].us_state",
        "victims[0].preferred_language",
        "victims[0].safety_concerns",
        "victims[1].safety_concerns",
    }
    for cls in (
        S.SENSITIVITY_VICTIM_IDENTITY,
        S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
        S.SENSITIVITY_REPORTER_IDENTITY,
        S.SENSITIVITY_TRADE,
        S.SENSITIVITY_IMMIGRATION,
    ):
        of_class = [c for c in canaries if cls in c.classes]
        assert of_class, S.Sensitivity.Name(cls)
        assert not [c.path for c in of_class if c.value.encode() in data], S.Sensitivity.Name(cls)


def test_ngo_copy_leaves_withheld_fields_absent_not_masked(
    filled: tuple[referral_pb2.Referral, list[Canary]],
) -> None:
    referral, _ = filled
    copy = redact(referral, NGO_PROFILE)
    assert isinstance(copy, referral_pb2.Referral)

    assert not copy.HasField("reporter")
    assert copy.narrative == ""
    assert len(copy.suspects) == 0
    assert len(copy.goods) == 0
    assert len(copy.attachments) == 0
    assert not copy.locations[0].HasField("address")
    for victim in copy.victims:
        assert victim.full_name == ""
        assert victim.date_of_birth == ""
        assert victim.phone == ""
        assert victim.email == ""
        assert victim.description == ""
        assert not victim.HasField("home_address")
        assert len(victim.documents) == 0
        assert victim.nationality == ""
        assert victim.immigration_status == ""
        # ...while the victim's needs and the operational facts stay.
        assert victim.HasField("age")
        assert list(victim.needs) == [referral_pb2.SERVICE_NEED_SHELTER] * 2
        assert victim.us_state
        assert victim.preferred_language
        assert victim.safety_concerns
        assert len(victim.consents) == 2
    assert [v.victim_ref for v in copy.victims] == ["v1", "v2"]
    assert copy.source == referral.source
    assert list(copy.indicators) == list(referral.indicators)
    assert copy.locations[0].HasField("coordinates")
    assert copy.vessel.imo_number == referral.vessel.imo_number
    assert _set_fields_outside(copy, NGO_PROFILE, frozenset()) == []


def test_redact_returns_a_copy_and_leaves_the_original_whole(
    filled: tuple[referral_pb2.Referral, list[Canary]],
) -> None:
    referral, _ = filled
    before = referral.SerializeToString(deterministic=True)

    copy = redact(referral, NGO_PROFILE)

    assert copy is not referral
    assert referral.SerializeToString(deterministic=True) == before
    assert copy.SerializeToString(deterministic=True) != before


def test_everything_released_keeps_the_referral_unchanged(
    filled: tuple[referral_pb2.Referral, list[Canary]],
) -> None:
    referral, _ = filled
    every_class = frozenset(S.Sensitivity.values()) - {S.SENSITIVITY_UNSPECIFIED}

    copy = redact(referral, every_class, victim_identity_released=lambda _victim: True)

    assert copy == referral


# --- identity released per victim -----------------------------------------------------------


def test_identity_released_for_one_victim_only(
    filled: tuple[referral_pb2.Referral, list[Canary]],
) -> None:
    referral, canaries = filled
    seen: list[str] = []

    def only_v2(victim: Message) -> bool:
        seen.append(victim.victim_ref)  # type: ignore[attr-defined]
        return victim.victim_ref == "v2"  # type: ignore[attr-defined]

    copy = redact(referral, NGO_PROFILE, victim_identity_released=only_v2)
    data = copy.SerializeToString()
    assert isinstance(copy, referral_pb2.Referral)

    assert sorted(seen) == ["v1", "v2"]
    v1, v2 = copy.victims
    assert v1.full_name == ""
    assert not v1.HasField("home_address")
    assert len(v1.documents) == 0
    assert v2.full_name == _canary_of(canaries, "victims[1].full_name")
    assert v2.home_address.street == _canary_of(canaries, "victims[1].home_address.street")
    assert v2.documents[1].number == _canary_of(canaries, "victims[1].documents[1].number")
    # Identity release does not open other classes of the released victim.
    assert v2.nationality == ""
    assert v2.immigration_status == ""

    released_victims = frozenset({1})
    leaked = sorted(
        c.path
        for c in canaries
        if not c.released(NGO_PROFILE, released_victims) and c.value.encode() in data
    )
    missing = sorted(
        c.path
        for c in canaries
        if c.released(NGO_PROFILE, released_victims) and c.value.encode() not in data
    )
    assert not leaked, f"withheld strings in the copy: {leaked}"
    assert not missing, f"released strings missing from the copy: {missing}"
    assert _set_fields_outside(copy, NGO_PROFILE, frozenset({"v2"})) == []


def test_identity_class_in_the_profile_does_not_release_identity_without_the_victim_rule(
    filled: tuple[referral_pb2.Referral, list[Canary]],
) -> None:
    referral, canaries = filled

    copy = redact(referral, NGO_PROFILE | {VICTIM_IDENTITY})
    data = copy.SerializeToString()

    identity = [c for c in canaries if VICTIM_IDENTITY in c.classes]
    assert identity
    assert not [c.path for c in identity if c.value.encode() in data]


# --- the operational view for logs and spans ---------------------------------------------------


def _only_operational_keys(
    view: dict[str, Any], descriptor: Descriptor, path: str = ""
) -> list[str]:
    wrong: list[str] = []
    for key, value in view.items():
        field = descriptor.fields_by_name[key]
        if sensitivity_of(field) != OPERATIONAL:
            wrong.append(path + key)
        elif field.message_type is not None and field.message_type.full_name.startswith(
            "ctroute."
        ):
            for item in value if isinstance(value, list) else [value]:
                wrong += _only_operational_keys(item, field.message_type, f"{path}{key}.")
    return wrong


def _strings(value: Any) -> set[str]:
    if isinstance(value, dict):
        return {s for item in value.values() for s in _strings(item)}
    if isinstance(value, list):
        return {s for item in value for s in _strings(item)}
    return {value} if isinstance(value, str) else set()


def test_operational_view_holds_only_operational_values(
    filled: tuple[referral_pb2.Referral, list[Canary]],
) -> None:
    referral, canaries = filled
    operational = frozenset({OPERATIONAL})

    view = operational_view(referral)

    assert _only_operational_keys(view, referral.DESCRIPTOR) == []
    found = {s for s in _strings(view) if s.startswith("CANARY")}
    assert found == {c.value for c in canaries if c.released(operational)}
    assert [v["victim_ref"] for v in view["victims"]] == ["v1", "v2"]
    assert all(set(v) == {"victim_ref", "count"} for v in view["victims"])
    assert "narrative" not in view
    assert "reporter" not in view
    assert "address" not in view["locations"][0]
