"""What a victim-service partner does with each delivery it receives.

Victim assistance never depends on cooperating with a prosecution: every new delivery opens a
case at once, whatever the referral's enforcement outcome, and the HSI Victim Assistance Program
assigns a victim specialist immediately (so it accepts the referral as soon as it acknowledges
it). Every later notice about the referral (an amendment, a withdrawal, a recall of a victim's
identity) is recorded against the delivery it came in, so the case file shows everything the
partner was told and acknowledged.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

INBOX_PARTNERS = re.compile(r"^(hsi-vap|uscis|ngo-[a-z][a-z0-9-]*)$")
"""The partners this service works for."""

VICTIM_ASSISTANCE = "hsi-vap"
"""The HSI Victim Assistance Program: receives every identified victim (rule R7)."""

CONTENT_KINDS = frozenset({"NEW", "AMENDMENT"})
"""Deliveries that carry the referral's content (the others carry ids only)."""


@dataclass(frozen=True)
class DeliveryView:
    """The facts of a delivery the victim-services domain uses (no personal data).

    ``kind`` is what the delivery tells the partner (NEW, AMENDMENT, WITHDRAWAL, RECALL,
    REMINDER); ``victim_refs`` are the references of the victims in its copy;
    ``recalled_victim_ref`` is set on a RECALL.
    """

    delivery_id: str
    referral_id: str
    partner: str
    priority: str
    victim_count: int
    identified_victims: int
    kind: str = "NEW"
    victim_refs: tuple[str, ...] = ()
    recalled_victim_ref: str = ""


@dataclass(frozen=True)
class Case:
    """An entry of a case file: the case opened for a new delivery, or a later notice on it."""

    delivery_id: str
    referral_id: str
    partner: str
    kind: str
    priority: str
    victims: int
    identified_victims: int
    notice: str = "NEW"
    victim_refs: tuple[str, ...] = ()
    recalled_victim_ref: str = ""

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def open_case(delivery: DeliveryView) -> Case:
    """The case-file entry a victim-service partner makes for a delivery."""
    if not INBOX_PARTNERS.match(delivery.partner):
        raise ValueError(f"victim services does not serve partner {delivery.partner!r}")
    if delivery.partner == VICTIM_ASSISTANCE:
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
        notice=delivery.kind,
        victim_refs=delivery.victim_refs,
        recalled_victim_ref=delivery.recalled_victim_ref,
    )


def states_to_report(delivery: DeliveryView) -> tuple[str, ...]:
    """The states the partner reports for a delivery, in order.

    Every delivery is acknowledged. A copy with content for the Victim Assistance Program is
    also accepted at once: a victim specialist is assigned immediately, before and regardless of
    anything law enforcement does. Notices (withdrawal, recall) are acknowledged only: there is
    nothing to accept, and the partner confirms it has acted on them.
    """
    if delivery.partner == VICTIM_ASSISTANCE and delivery.kind in CONTENT_KINDS:
        return ("ACKNOWLEDGED", "ACCEPTED")
    return ("ACKNOWLEDGED",)


def opens_entry(delivery: DeliveryView) -> bool:
    """Whether the delivery adds to the case file: a reminder repeats a delivery already there."""
    return delivery.kind != "REMINDER"


def known_victims(previous: frozenset[str], delivery: DeliveryView) -> frozenset[str]:
    """The victims of a referral victim services knows of, after this delivery.

    Consent can only be recorded for a victim the service has seen in a copy it received; the
    union over every copy, since a later amendment may add victims.
    """
    if delivery.kind not in CONTENT_KINDS:
        return previous
    return previous | frozenset(delivery.victim_refs)
