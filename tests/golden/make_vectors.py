"""Writes the golden vectors: encoded contract messages the current code must keep decoding.

Run by hand, from the repository root, only when a vector is added on purpose:

    python tests/golden/make_vectors.py

Each vector is written twice next to this file: ``<name>.binpb`` (the protobuf binary
encoding, as it travels on Kafka) and ``<name>.json`` (the protobuf JSON mapping of the same
message). ``tests/contract/test_golden_vectors.py`` decodes the checked-in files with the
generated classes of the day; a renumbered or retyped field makes it fail. Never regenerate the
files to make that test pass: a vector that no longer decodes is a breaking change.

All data is synthetic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ctroute.options.v1 import sensitivity_pb2 as S
from ctroute.partner.v1 import delivery_pb2 as D
from ctroute.referral.v1 import lifecycle_pb2 as L
from ctroute.referral.v1 import referral_pb2 as R

HERE = Path(__file__).resolve().parent
REFERRAL_ID = "ref-5d1c2a7e9b0f4c3d8e6a"


def _ts(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(text).astimezone(UTC))
    return stamp


def _referral() -> R.Referral:
    return R.Referral(
        referral_id=REFERRAL_ID,
        source="uscg-boarding",
        source_reference="BRD-2024-00117",
        received_at=_ts("2024-05-02T14:03:21.250+00:00"),
        observed_at=_ts("2024-05-01T22:40:00+00:00"),
        indicators=[R.INDICATOR_LABOR_TRAFFICKING, R.INDICATOR_DOCUMENT_SERVITUDE],
        victims=[
            R.PotentialVictim(
                victim_ref="v1",
                full_name="Ana Example-Ruiz",
                date_of_birth="2006-09-14",
                phone="+1 305 555 0142",
                email="ana.example@example.org",
                home_address=R.VictimAddress(
                    street="100 Sample Ave Apt 4", city="Miami", us_state="FL", postal_code="33101"
                ),
                documents=[
                    R.IdentityDocument(
                        kind=R.IDENTITY_DOCUMENT_KIND_PASSPORT,
                        number="X0000001",
                        issuing_country="HN",
                    )
                ],
                nationality="HN",
                immigration_status="unknown",
                us_state="FL",
                needs=[R.SERVICE_NEED_SHELTER, R.SERVICE_NEED_INTERPRETATION],
                preferred_language="es",
                safety_concerns="employer holds her passport",
                consents=[
                    R.Consent(
                        scope=R.CONSENT_SCOPE_VICTIM_SERVICES_REFERRAL,
                        granted_at=_ts("2024-05-02T09:00:00+00:00"),
                        expires_at=_ts("2024-11-02T09:00:00+00:00"),
                    )
                ],
                count=1,
            ),
            R.PotentialVictim(
                victim_ref="v2",
                age=34,
                count=11,
                description="eleven deckhands recruited in the same port",
                needs=[R.SERVICE_NEED_LEGAL],
            ),
        ],
        suspects=[
            R.Suspect(
                name="Sample Fishing Ltd",
                aliases=["SFL"],
                phone="+1 555 0100",
                description="vessel operator",
            )
        ],
        reporter=R.Reporter(name="Crew Member Example", role="deckhand", phone="+1 555 0199"),
        locations=[
            R.Location(
                kind=R.LOCATION_KIND_AT_SEA,
                coordinates=R.Coordinates(latitude=24.5551, longitude=-81.78),
            ),
            R.Location(
                kind=R.LOCATION_KIND_PORT_OF_ENTRY, us_state="FL", port_of_entry_code="5203"
            ),
        ],
        vessel=R.Vessel(
            name="SAMPLE STAR", imo_number="9074729", mmsi="366999712", flag_state="PA"
        ),
        goods=[
            R.GoodsAllegation(
                product="frozen tuna loins",
                hts_code="0304.87",
                producer="Sample Fishing Ltd",
                country_of_origin="PA",
                importer="Example Seafood Imports LLC",
                destined_for_us=True,
                shipment_ids=["MSCU1234567"],
            )
        ],
        imminent_danger=True,
        narrative="Crew report 14-hour days without pay; passports held by the captain.",
        attachments=[
            R.Attachment(
                uri="https://evidence.uscg.example/brd-2024-00117/photo-1.jpg",
                media_type="image/jpeg",
                sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            )
        ],
    )


def referral_submitted() -> L.ReferralSubmitted:
    return L.ReferralSubmitted(referral=_referral(), submitted_by="uscg-boarding")


def partner_delivery() -> D.PartnerDelivery:
    """An NGO's copy: operational facts and victims' needs, v1's identity under consent."""
    referral = R.Referral(
        referral_id=REFERRAL_ID,
        source="uscg-boarding",
        source_reference="BRD-2024-00117",
        received_at=_ts("2024-05-02T14:03:21.250+00:00"),
        indicators=[R.INDICATOR_LABOR_TRAFFICKING, R.INDICATOR_DOCUMENT_SERVITUDE],
        victims=[
            R.PotentialVictim(
                victim_ref="v1",
                full_name="Ana Example-Ruiz",
                phone="+1 305 555 0142",
                us_state="FL",
                needs=[R.SERVICE_NEED_SHELTER, R.SERVICE_NEED_INTERPRETATION],
                preferred_language="es",
                count=1,
            ),
            R.PotentialVictim(victim_ref="v2", age=34, count=11, needs=[R.SERVICE_NEED_LEGAL]),
        ],
        imminent_danger=True,
    )
    return D.PartnerDelivery(
        delivery_id="dlv-ref-5d1c2a7e9b0f4c3d8e6a-ngo-southeast",
        partner="ngo-southeast",
        priority=L.PRIORITY_URGENT,
        rule_ids=["R4", "R7"],
        delivered_at=_ts("2024-05-02T14:03:22+00:00"),
        acknowledge_by=_ts("2024-05-02T14:18:22+00:00"),
        referral=referral,
        released_classes=[
            S.SENSITIVITY_OPERATIONAL,
            S.SENSITIVITY_VICTIM_NEEDS,
            S.SENSITIVITY_VICTIM_IDENTITY,
        ],
        policy_version="sha256:3b1f0c9a",
        kind=D.DELIVERY_KIND_NEW,
    )


def referral_routed() -> L.ReferralRouted:
    decision = L.RoutingDecision(
        policy_version="sha256:3b1f0c9a",
        priority=L.PRIORITY_URGENT,
        matched_rules=[
            L.RuleMatch(rule_id="R4", reason="imminent danger"),
            L.RuleMatch(rule_id="R7", reason="victim needs services in FL"),
        ],
        partners=[
            L.PartnerRelease(
                partner="hsi",
                priority=L.PRIORITY_URGENT,
                rule_ids=["R4"],
                released_classes=[
                    S.SENSITIVITY_OPERATIONAL,
                    S.SENSITIVITY_TRADE,
                    S.SENSITIVITY_LAW_ENFORCEMENT_SENSITIVE,
                    S.SENSITIVITY_VICTIM_NEEDS,
                    S.SENSITIVITY_VICTIM_IDENTITY,
                    S.SENSITIVITY_REPORTER_IDENTITY,
                ],
                victim_identities=[
                    L.VictimRelease(victim_ref="v1", basis=L.RELEASE_BASIS_MINOR_OVERRIDE)
                ],
                delivery_id="dlv-ref-5d1c2a7e9b0f4c3d8e6a-hsi",
            ),
            L.PartnerRelease(
                partner="ngo-southeast",
                priority=L.PRIORITY_URGENT,
                rule_ids=["R4", "R7"],
                released_classes=[
                    S.SENSITIVITY_OPERATIONAL,
                    S.SENSITIVITY_VICTIM_NEEDS,
                    S.SENSITIVITY_VICTIM_IDENTITY,
                ],
                victim_identities=[
                    L.VictimRelease(victim_ref="v1", basis=L.RELEASE_BASIS_CONSENT)
                ],
                withheld_victim_refs=["v2"],
                delivery_id="dlv-ref-5d1c2a7e9b0f4c3d8e6a-ngo-southeast",
            ),
        ],
        decided_at=_ts("2024-05-02T14:03:21.900+00:00"),
    )
    return L.ReferralRouted(referral_id=REFERRAL_ID, source="uscg-boarding", decision=decision)


def delivery_status_reported() -> D.DeliveryStatusReported:
    return D.DeliveryStatusReported(
        referral_id=REFERRAL_ID,
        report=D.ReportDeliveryStatusRequest(
            delivery_id="dlv-ref-5d1c2a7e9b0f4c3d8e6a-ngo-southeast",
            partner="ngo-southeast",
            state=L.DELIVERY_STATE_DECLINED,
            decline_reason=L.DECLINE_REASON_NO_CAPACITY,
            note="shelter full this week",
        ),
        reported_at=_ts("2024-05-02T15:10:00+00:00"),
    )


VECTORS: dict[str, Message] = {
    "referral_submitted": referral_submitted(),
    "partner_delivery": partner_delivery(),
    "referral_routed": referral_routed(),
    "delivery_status_reported": delivery_status_reported(),
}


def main() -> None:
    for name, message in VECTORS.items():
        binary = HERE / f"{name}.binpb"
        text = HERE / f"{name}.json"
        binary.write_bytes(message.SerializeToString(deterministic=True))
        text.write_text(json_format.MessageToJson(message, indent=2, sort_keys=True) + "\n")
        print(f"wrote {binary.name} and {text.name} ({message.DESCRIPTOR.full_name})")


if __name__ == "__main__":
    main()
