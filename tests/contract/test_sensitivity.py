"""Every field of the contract carries a sensitivity class, and person-related ones the right one.

Redaction per partner and scrubbing of logs, spans and error messages read the classes from the
descriptors at run time, so a field without a class (or with a too-lenient one) would leak. The
walker below takes descriptors, so the test can prove it finds an unclassified field at any
nesting depth in a throwaway file.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Iterable, Iterator

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

import ctroute
from ctroute.options.v1 import sensitivity_pb2
from plumbing import contract

S = sensitivity_pb2
UNSPECIFIED = S.SENSITIVITY_UNSPECIFIED


def class_of(field: FieldDescriptor) -> int:
    return int(field.GetOptions().Extensions[sensitivity_pb2.sensitivity])


def _messages(types: Iterable[Descriptor]) -> Iterator[Descriptor]:
    for message in types:
        yield message
        yield from _messages(message.nested_types)


def all_fields(files: Iterable[FileDescriptor]) -> Iterator[FieldDescriptor]:
    """Every field of every message type (nested ones included) declared in `files`."""
    for file in files:
        yield from (
            field
            for message in _messages(file.message_types_by_name.values())
            for field in message.fields
        )


def unclassified_fields(files: Iterable[FileDescriptor]) -> list[str]:
    """The full names (`package.Message.field`) of the fields without a sensitivity class."""
    return sorted(field.full_name for field in all_fields(files) if class_of(field) == UNSPECIFIED)


def _contract_files() -> list[FileDescriptor]:
    return [module.DESCRIPTOR for module in contract.load()]


def _field(full_name: str) -> FieldDescriptor:
    contract.load()
    message_name, _, field_name = full_name.rpartition(".")
    message = descriptor_pool.Default().FindMessageTypeByName(message_name)
    return message.fields_by_name[field_name]


# --- every field has a class -------------------------------------------------------------------


def test_contract_load_covers_every_generated_ctroute_module() -> None:
    """A new .proto file that plumbing.contract.load() forgot would escape every check below."""
    generated = {
        info.name
        for info in pkgutil.walk_packages(ctroute.__path__, prefix="ctroute.")
        if info.name.endswith("_pb2")
    }
    loaded = {module.__name__ for module in contract.load()}
    assert generated, "no generated ctroute modules found"
    assert generated == loaded, f"not loaded by plumbing.contract.load(): {generated - loaded}"


def test_every_contract_field_has_a_sensitivity_class() -> None:
    missing = unclassified_fields(_contract_files())
    assert not missing, "fields without (ctroute.options.v1.sensitivity):\n  " + "\n  ".join(
        missing
    )


def test_walker_visits_the_whole_contract() -> None:
    """A walker that visits nothing would pass the test above vacuously."""
    names = {field.full_name for field in all_fields(_contract_files())}
    for expected in (
        "ctroute.referral.v1.Referral.narrative",
        "ctroute.referral.v1.PotentialVictim.full_name",
        "ctroute.referral.v1.VictimAddress.postal_code",
        "ctroute.referral.v1.SubmitReferralRequest.referral",
        "ctroute.referral.v1.RoutingDecision.partners",
        "ctroute.referral.v1.TimelineEntry.detail",
        "ctroute.partner.v1.PartnerDelivery.referral",
        "ctroute.partner.v1.ReportDeliveryStatusRequest.note",
    ):
        assert expected in names
    assert len(names) > 150


def _scratch_file(*, classify_all: bool = False) -> FileDescriptor:
    """A throwaway file in a fresh pool: classified fields plus unclassified ones (one nested)."""
    pool = descriptor_pool.DescriptorPool()
    for dependency in (descriptor_pb2.DESCRIPTOR, sensitivity_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        dependency.CopyToProto(proto)
        pool.Add(proto)
    scratch = descriptor_pb2.FileDescriptorProto(
        name="ctroute/scratch/v1/scratch.proto",
        package="ctroute.scratch.v1",
        syntax="proto3",
        dependency=[sensitivity_pb2.DESCRIPTOR.name],
    )
    string, optional = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    outer = scratch.message_type.add(name="Case")
    ref = outer.field.add(name="case_ref", number=1, type=string, label=optional)
    ref.options.Extensions[sensitivity_pb2.sensitivity] = S.SENSITIVITY_OPERATIONAL
    inner = outer.nested_type.add(name="Witness")
    name = inner.field.add(name="name", number=1, type=string, label=optional)
    name.options.Extensions[sensitivity_pb2.sensitivity] = S.SENSITIVITY_REPORTER_IDENTITY
    phone = inner.field.add(name="phone", number=2, type=string, label=optional)
    other = scratch.message_type.add(name="Note")
    text = other.field.add(name="text", number=1, type=string, label=optional)
    if classify_all:
        phone.options.Extensions[sensitivity_pb2.sensitivity] = S.SENSITIVITY_REPORTER_IDENTITY
        text.options.Extensions[sensitivity_pb2.sensitivity] = (
            S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE
        )
    pool.Add(scratch)
    return pool.FindFileByName(scratch.name)


def test_walker_reports_every_unclassified_field_at_any_depth() -> None:
    scratch = _scratch_file()

    assert unclassified_fields([scratch]) == [
        "ctroute.scratch.v1.Case.Witness.phone",
        "ctroute.scratch.v1.Note.text",
    ]


def test_walker_accepts_a_fully_classified_file() -> None:
    scratch = _scratch_file(classify_all=True)

    assert {field.full_name for field in all_fields([scratch])} == {
        "ctroute.scratch.v1.Case.case_ref",
        "ctroute.scratch.v1.Case.Witness.name",
        "ctroute.scratch.v1.Case.Witness.phone",
        "ctroute.scratch.v1.Note.text",
    }
    assert unclassified_fields([scratch]) == []


# --- person-related fields have the right class ----------------------------------------------

_V = "ctroute.referral.v1."
_P = "ctroute.partner.v1."

EXPECTED_CLASSES: dict[str, int] = {
    **{
        f"{_V}PotentialVictim.{name}": S.SENSITIVITY_VICTIM_IDENTITY
        for name in (
            "full_name",
            "date_of_birth",
            "phone",
            "email",
            "home_address",
            "documents",
            "description",
        )
    },
    **{
        f"{_V}VictimAddress.{name}": S.SENSITIVITY_VICTIM_IDENTITY
        for name in ("street", "city", "us_state", "postal_code")
    },
    **{
        f"{_V}IdentityDocument.{name}": S.SENSITIVITY_VICTIM_IDENTITY
        for name in ("kind", "number", "issuing_country")
    },
    f"{_V}Referral.reporter": S.SENSITIVITY_REPORTER_IDENTITY,
    **{
        f"{_V}Reporter.{name}": S.SENSITIVITY_REPORTER_IDENTITY
        for name in ("anonymous", "name", "phone", "email", "role")
    },
    f"{_V}Referral.narrative": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
    f"{_V}Referral.suspects": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
    f"{_V}Referral.attachments": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
    **{
        f"{_V}Suspect.{name}": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE
        for name in ("name", "aliases", "phone", "description")
    },
    f"{_V}Location.address": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
    f"{_V}ReferralAmended.reason": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
    f"{_V}ReferralWithdrawn.reason": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
    f"{_V}AmendReferralRequest.reason": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
    f"{_V}WithdrawReferralRequest.reason": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
    f"{_P}ReportDeliveryStatusRequest.note": S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
    f"{_V}PotentialVictim.nationality": S.SENSITIVITY_IMMIGRATION,
    f"{_V}PotentialVictim.immigration_status": S.SENSITIVITY_IMMIGRATION,
    f"{_V}Referral.goods": S.SENSITIVITY_TRADE,
    **{
        f"{_V}GoodsAllegation.{name}": S.SENSITIVITY_TRADE
        for name in (
            "product",
            "hts_code",
            "producer",
            "country_of_origin",
            "importer",
            "destined_for_us",
            "shipment_ids",
        )
    },
    **{
        f"{_V}PotentialVictim.{name}": S.SENSITIVITY_VICTIM_NEEDS
        for name in ("us_state", "needs", "preferred_language", "safety_concerns", "age")
    },
}


@pytest.mark.parametrize(
    ("field_name", "expected"), sorted(EXPECTED_CLASSES.items()), ids=sorted(EXPECTED_CLASSES)
)
def test_person_related_field_has_the_right_class(field_name: str, expected: int) -> None:
    actual = class_of(_field(field_name))
    assert actual == expected, (
        f"{field_name} is {S.Sensitivity.Name(actual)}, expected {S.Sensitivity.Name(expected)}"
    )


def test_every_field_of_a_person_describing_message_is_covered_above() -> None:
    """A field added to a victim, reporter, suspect, address or document needs a decision here."""
    person_messages = (
        "PotentialVictim",
        "VictimAddress",
        "IdentityDocument",
        "Reporter",
        "Suspect",
        "GoodsAllegation",
    )
    operational_by_design = {
        f"{_V}PotentialVictim.victim_ref",
        f"{_V}PotentialVictim.count",
        f"{_V}PotentialVictim.consents",  # VICTIM_NEEDS; the consent itself names no one
    }
    uncovered = sorted(
        field.full_name
        for message in person_messages
        for field in descriptor_pool.Default().FindMessageTypeByName(_V + message).fields
        if field.full_name not in EXPECTED_CLASSES and field.full_name not in operational_by_design
    )
    assert not uncovered, f"person-related fields without an expected class: {uncovered}"


# Field names that hold personal data wherever they appear; allowed as OPERATIONAL only when
# listed with the reason.
_PERSONAL_NAMES = {
    "name",
    "full_name",
    "aliases",
    "date_of_birth",
    "phone",
    "email",
    "street",
    "city",
    "postal_code",
    "home_address",
    "address",
    "number",
    "nationality",
    "immigration_status",
    "narrative",
    "description",
    "note",
}
_OPERATIONAL_ALLOWED = {
    f"{_V}Vessel.name",  # a ship's name, needed by every maritime recipient
}


def test_fields_named_like_personal_data_are_never_operational() -> None:
    lenient = sorted(
        field.full_name
        for field in all_fields(_contract_files())
        if field.name in _PERSONAL_NAMES
        and class_of(field) == S.SENSITIVITY_OPERATIONAL
        and field.full_name not in _OPERATIONAL_ALLOWED
    )
    assert not lenient, f"personal-data fields classified OPERATIONAL: {lenient}"
