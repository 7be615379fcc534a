"""What an enforcement partner opens for a delivery: an HSI lead, a CBP forced-labor allegation
record, a Coast Guard maritime tasking, or a CCHT triage item."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PARTNERS = ("hsi", "cbp", "uscg", "ccht")
"""The partners this service works for; the CCHT duty desk is HSI-led coordination."""

_KIND_BY_PARTNER = {
    "hsi": "HSI_LEAD",
    "cbp": "CBP_FORCED_LABOR_ALLEGATION",
    "uscg": "USCG_MARITIME_TASKING",
    "ccht": "CCHT_TRIAGE",
}


@dataclass(frozen=True)
class DeliveryView:
    """The facts of a delivery the enforcement domain uses (no personal data)."""

    delivery_id: str
    referral_id: str
    partner: str
    priority: str
    indicators: tuple[str, ...]
    goods_count: int
    vessel_involved: bool


@dataclass(frozen=True)
class WorkItem:
    """An agency work item opened for one delivery."""

    delivery_id: str
    referral_id: str
    partner: str
    kind: str
    priority: str
    summary: str

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def open_work_item(delivery: DeliveryView) -> WorkItem:
    """The work item a partner opens for a delivery."""
    if delivery.partner not in _KIND_BY_PARTNER:
        raise ValueError(f"enforcement does not serve partner {delivery.partner!r}")
    kind = _KIND_BY_PARTNER[delivery.partner]
    if kind == "CBP_FORCED_LABOR_ALLEGATION":
        summary = f"forced-labor allegation covering {delivery.goods_count} product(s)"
    elif kind == "USCG_MARITIME_TASKING":
        summary = "maritime tasking" + (" for a named vessel" if delivery.vessel_involved else "")
    else:
        summary = "indicators: " + (", ".join(delivery.indicators) or "none stated")
    return WorkItem(
        delivery_id=delivery.delivery_id,
        referral_id=delivery.referral_id,
        partner=delivery.partner,
        kind=kind,
        priority=delivery.priority,
        summary=summary,
    )
