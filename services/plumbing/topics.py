"""Names of the Kafka topics, in one place, so services, tools and deployment files agree.

Per-partner topics make partner isolation a matter of topic ACLs: a partner's principal reads
only its own inbox and writes only its own status topic.
"""

from __future__ import annotations

import re

SUBMITTED = "referrals.submitted"
"""Intake → router: ReferralSubmitted, ReferralAmended and ReferralWithdrawn events."""

LIFECYCLE = "referrals.lifecycle"
"""Router and services → trace store: routing decisions, deliveries, status changes."""

DEAD_LETTER = "referrals.deadletter"
"""Records no consumer could decode or accept, with the error and their origin in headers."""

PARTITIONS = 3
"""Partitions per topic: bounds how many router instances can share the work."""

_PARTNER_ID = re.compile(r"^[a-z][a-z0-9-]{1,62}$")


def inbox(partner: str) -> str:
    """The topic a partner receives its deliveries on."""
    return f"partner.{_checked(partner)}.inbox"


def status(partner: str) -> str:
    """The topic a partner reports the status of its deliveries on."""
    return f"partner.{_checked(partner)}.status"


def partner_of_status_topic(topic: str) -> str:
    """The partner id a status topic belongs to."""
    prefix, partner, suffix = topic.split(".", 2)
    if prefix != "partner" or suffix != "status":
        raise ValueError(f"{topic!r} is not a partner status topic")
    return partner


def _checked(partner: str) -> str:
    if not _PARTNER_ID.match(partner):
        raise ValueError(f"invalid partner id {partner!r}: use lowercase letters, digits and '-'")
    return partner


ROUTER_STATE = (
    "referral-router-routed-revisions-changelog",
    "referral-router-correlation-index-changelog",
    "referral-router-referral-state-changelog",
)
"""The router's changelogs (its durable memory: routed revisions, the correlation index, each
referral's state), compacted and partitioned like the submitted topic. Created up front with the
other topics: the router restores from them before it routes a record."""


def configs(topic: str) -> dict[str, str]:
    """Topic-level settings: changelogs keep only the latest value per key."""
    return {"cleanup.policy": "compact"} if topic in ROUTER_STATE else {}


def all_topics(partners: list[str]) -> list[str]:
    """Every topic the system needs for the given partners."""
    names = [SUBMITTED, LIFECYCLE, DEAD_LETTER, *ROUTER_STATE]
    for partner in sorted(partners):
        names += [inbox(partner), status(partner)]
    return names
