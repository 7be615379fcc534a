"""What a victim-service partner opens for a delivery.

Victim assistance never depends on cooperating with a prosecution: every delivery opens a case
at once, whatever the referral's enforcement outcome.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

INBOX_PARTNERS = re.compile(r"^(hsi-vap|uscis|ngo-[a-z][a-z0-9-]*)$")
"""The partners this service works for."""


@dataclass(frozen=True)
class DeliveryView:
    """The facts of a delivery the victim-services domain uses (no personal data)."""

    delivery_id: str
    referral_id: str
    partner: str
    priority: str
    victim_count: int
    identified_victims: int


@dataclass(frozen=True)
class Case:
    """A case opened for one delivery."""

    delivery_id: str
    referral_id: str
    partner: str
    kind: str
    priority: str
    victims: int
    identified_victims: int

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def open_case(delivery: DeliveryView) -> Case:
    """The case a victim-service partner opens for a delivery."""
    if not INBOX_PARTNERS.match(delivery.partner):
        raise ValueError(f"victim services does not serve partner {delivery.partner!r}")
    if delivery.partner == "hsi-vap":
        kind = "VICTIM_ASSISTANCE_CASE"
    elif delivery.partner == "uscis":
        kind = "IMMIGRATION_RELIEF_SCREENING"
    else:
        kind = "NGO_SERVICE_REFERRAL"
    return Case(
        delivery_id=delivery.delivery_id,
        referral_id=delivery.referral_id,
        partner=delivery.partner,
        kind=kind,
        priority=delivery.priority,
        victims=delivery.victim_count,
        identified_victims=delivery.identified_victims,
    )
