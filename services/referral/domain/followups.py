"""What happens to a referral after its first routing: amendments, withdrawals, consent changes
and declines, decided as pure functions over what each partner already holds.

The router remembers, per referral, the source's latest content, the consent changes victim
services recorded after submission, and per partner what it holds (a ``Holding``: priority, the
rules that chose it, whose identities it received and on which basis). Each follow-up event turns
that memory and a fresh routing decision into ``Notice``s, one per partner to tell, and the new
holdings. Nothing here knows protobuf, Kafka or faust, so every rule below is unit-tested alone.

Decisions (the domain note's lifecycle, "Consent-gated release" and "Closed loop"):

* **Amendment.** The amended content is routed afresh. A partner that holds the referral and is
  chosen again gets an AMENDMENT (the full new copy, replacing the old); a partner chosen for
  the first time gets NEW; a partner no longer chosen gets a WITHDRAWAL, so nobody keeps acting
  on content the source has corrected away from them. A partner that declined is not sent the
  amendment (it refused the work; its replacement gets it), and a partner that took over a
  declined referral (the CCHT desk) keeps receiving amendments although no rule chose it.
* **Withdrawal by the source.** Every partner that received the referral, declined or not, gets
  a WITHDRAWAL carrying ids only.
* **Consent withdrawn.** A RECALL, naming the victim by reference only, goes to every partner
  that received the victim's identity *on the basis of a consent of that scope* and may no
  longer hold it. Partners that hold it by their role (the Victim Assistance Program and the
  CCHT desk: basis PARTNER_PROFILE) or by an override (the victim is a minor, or imminent danger
  is flagged) keep it: the note releases identity to them without consent, so withdrawing a
  consent does not take away their ground. Later routing (amendments) applies the withdrawal.
* **Consent granted.** The referral is routed again with the consent; only partners that do not
  hold it yet get a NEW delivery (e.g. USCIS after an immigration-relief consent). Existing
  recipients are not re-sent the referral: a grant widens what the *next* copy may contain, and
  re-delivering every copy on every grant would flood partners with unchanged referrals.
* **Declined (out of jurisdiction, no capacity).** The referral goes to the next candidate. With
  the default policy there is no other candidate of the same kind (each state has one NGO, and
  enforcement partners have no stand-ins), so it is the CCHT desk, unless the desk already has
  the referral: then nothing more is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from referral.domain.facts import ConsentFact, ConsentScope, Priority, ReleaseBasis
from referral.domain.lifecycle import REROUTING_DECLINE_REASONS
from referral.domain.policy import Policy
from referral.domain.routing import PartnerRelease, RoutingDecision, VictimRelease

ESCALATION_DESK = "ccht"
"""The CCHT duty desk: the partner of last resort for a declined referral."""

REROUTE_RULE_ID = "DECLINE-REROUTE"
"""Stands for the rule that chose a partner taking over a declined referral; no policy rule did.
Upper case with a dash, so it reads as a rule id in decisions and cannot be mistaken for one of
the policy's R-numbers."""

# The next candidates for a declined referral, in order. The default policy has one NGO per state
# and no stand-in for an enforcement partner, so the desk is the only candidate for every partner.
_CANDIDATES: tuple[str, ...] = (ESCALATION_DESK,)

_DECLINE_WORDS = {
    "OUT_OF_JURISDICTION": "as out of its jurisdiction",
    "NO_CAPACITY": "for lack of capacity",
}


class NoticeKind(StrEnum):
    """What a delivery tells a partner (the contract's DeliveryKind without the prefix)."""

    NEW = "NEW"
    AMENDMENT = "AMENDMENT"
    WITHDRAWAL = "WITHDRAWAL"
    RECALL = "RECALL"


@dataclass(frozen=True, slots=True)
class Holding:
    """What one partner holds of a referral.

    ``identities`` are the victims whose identity the partner received, with the basis of the
    release; ``declined`` is set once the partner declined the referral; ``substitute`` marks a
    partner that holds it because another declined, not because a rule chose it.
    """

    partner: str
    priority: Priority
    rule_ids: tuple[str, ...]
    identities: tuple[VictimRelease, ...] = ()
    declined: bool = False
    substitute: bool = False

    @classmethod
    def of(cls, release: PartnerRelease, *, substitute: bool = False) -> Holding:
        """The holding a delivery of ``release`` leaves the partner with."""
        return cls(
            release.partner,
            release.priority,
            release.rule_ids,
            release.victim_identities,
            substitute=substitute,
        )

    def basis_for(self, victim_ref: str) -> ReleaseBasis | None:
        """The basis on which the partner received the victim's identity, or None."""
        for release in self.identities:
            if release.victim_ref == victim_ref:
                return release.basis
        return None


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """A consent granted or withdrawn after submission, as victim services recorded it.

    ``at`` is when the victim granted (or withdrew) the consent; ``expires_at`` is a grant's
    expiry.
    """

    victim_ref: str
    scope: ConsentScope
    at: datetime
    withdrawn: bool = False
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReferralState:
    """What the router remembers of a referral between events.

    ``content`` is the serialized referral as the source last submitted or amended it (opaque
    here); the effective content is it with ``consent_changes`` applied, in order.
    """

    content: bytes
    holdings: tuple[Holding, ...] = ()
    consent_changes: tuple[ConsentChange, ...] = ()
    withdrawn: bool = False

    def holding(self, partner: str) -> Holding | None:
        """What ``partner`` holds, or None when it never received the referral."""
        for holding in self.holdings:
            if holding.partner == partner:
                return holding
        return None


@dataclass(frozen=True, slots=True)
class Notice:
    """One delivery to make: to whom, of which kind, and (NEW, AMENDMENT) what it releases."""

    partner: str
    kind: NoticeKind
    priority: Priority
    release: PartnerRelease | None = None
    recalled_victim_ref: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The deliveries a follow-up makes and what every partner holds afterwards."""

    notices: tuple[Notice, ...]
    holdings: tuple[Holding, ...]


@dataclass(frozen=True, slots=True)
class Reroute:
    """Where a declined referral goes next: ``target`` (None: nowhere), at which priority (the
    decliner's), and why, in words without personal data."""

    plan: Plan
    target: str | None
    explanation: str
    priority: Priority | None = None


# --- consent changes ------------------------------------------------------------------------


def apply_consent_changes(
    consents: Sequence[ConsentFact], changes: Sequence[ConsentChange]
) -> tuple[ConsentFact, ...]:
    """One victim's consents after the changes recorded for them, applied in order.

    A change only touches consents of its scope given no later than itself, so the victim's
    latest word wins whichever way the records arrive: a withdrawal marks earlier consents
    withdrawn (keeping an earlier withdrawal time), and a grant replaces earlier consents of its
    scope. A consent the source records later than a withdrawal (the victim consented again, to
    the hotline) stands.
    """
    result = list(consents)
    for change in changes:
        if change.withdrawn:
            result = [
                replace(
                    consent,
                    withdrawn_at=(
                        change.at
                        if consent.withdrawn_at is None
                        else min(consent.withdrawn_at, change.at)
                    ),
                )
                if consent.scope == change.scope and consent.granted_at <= change.at
                else consent
                for consent in result
            ]
        else:
            result = [
                consent
                for consent in result
                if not (consent.scope == change.scope and consent.granted_at <= change.at)
            ]
            result.append(ConsentFact(change.scope, change.at, change.expires_at, None))
    return tuple(result)


def changes_for(victim_ref: str, changes: Sequence[ConsentChange]) -> tuple[ConsentChange, ...]:
    """The changes recorded for one victim, in recorded order."""
    return tuple(change for change in changes if change.victim_ref == victim_ref)


# --- plans ----------------------------------------------------------------------------------


def plan_submission(decision: RoutingDecision) -> Plan:
    """A new referral: every chosen partner gets it as NEW."""
    return Plan(
        tuple(Notice(r.partner, NoticeKind.NEW, r.priority, r) for r in decision.partners),
        tuple(Holding.of(r) for r in decision.partners),
    )


def plan_amendment(
    holdings: Sequence[Holding],
    decision: RoutingDecision,
    substitute_releases: Mapping[str, PartnerRelease],
) -> Plan:
    """The amended content's decision against what partners hold (see the module docstring).

    ``substitute_releases`` holds, for each substitute not chosen by the decision, what it may
    receive of the amended content under its own profile.
    """
    held = {h.partner: h for h in holdings}
    chosen = {r.partner: r for r in decision.partners}
    notices: list[Notice] = []
    after: dict[str, Holding] = {}
    for partner in sorted(held.keys() | chosen.keys()):
        holding = held.get(partner)
        release = chosen.get(partner)
        if holding is not None and holding.declined:
            after[partner] = holding
        elif release is not None:
            kind = NoticeKind.NEW if holding is None else NoticeKind.AMENDMENT
            notices.append(Notice(partner, kind, release.priority, release))
            after[partner] = Holding.of(release)
        elif holding is not None and holding.substitute:
            kept = substitute_releases[partner]
            notices.append(Notice(partner, NoticeKind.AMENDMENT, kept.priority, kept))
            after[partner] = Holding.of(kept, substitute=True)
        elif holding is not None:
            # No longer chosen: told the referral is withdrawn for it, and forgotten as a holder.
            notices.append(Notice(partner, NoticeKind.WITHDRAWAL, holding.priority))
    return Plan(tuple(notices), tuple(after[p] for p in sorted(after)))


def plan_new_recipients(holdings: Sequence[Holding], decision: RoutingDecision) -> Plan:
    """After a consent grant: NEW for the partners chosen now that hold nothing yet."""
    held = {h.partner for h in holdings}
    fresh = [r for r in decision.partners if r.partner not in held]
    return Plan(
        tuple(Notice(r.partner, NoticeKind.NEW, r.priority, r) for r in fresh),
        tuple(sorted((*holdings, *(Holding.of(r) for r in fresh)), key=lambda h: h.partner)),
    )


def plan_withdrawal(holdings: Sequence[Holding]) -> Plan:
    """The source withdrew the referral: every partner that received it is told."""
    return Plan(
        tuple(Notice(h.partner, NoticeKind.WITHDRAWAL, h.priority) for h in holdings),
        tuple(holdings),
    )


def plan_recalls(
    holdings: Sequence[Holding],
    victim_ref: str,
    scope: ConsentScope,
    policy: Policy,
    releases_after: Mapping[str, PartnerRelease],
) -> Plan:
    """After a victim withdrew the consent of ``scope``: who must destroy the victim's identity.

    A partner is recalled when it received the identity on basis CONSENT, its profile releases
    identity on a consent of exactly this scope, and under ``releases_after`` (what its profile
    allows once the withdrawal is applied) it may no longer hold it. A partner that may still
    hold it on another ground (a minor who had also consented) keeps it, with the new basis.
    """
    notices: list[Notice] = []
    after: list[Holding] = []
    for holding in holdings:
        if holding.basis_for(victim_ref) is not ReleaseBasis.CONSENT or not _released_on(
            policy, holding.partner, scope
        ):
            after.append(holding)
            continue
        still = _identity_in(releases_after.get(holding.partner), victim_ref)
        if still is not None:
            after.append(replace(holding, identities=_with_identity(holding, still)))
            continue
        notices.append(
            Notice(holding.partner, NoticeKind.RECALL, holding.priority, None, victim_ref)
        )
        after.append(
            replace(
                holding,
                identities=tuple(v for v in holding.identities if v.victim_ref != victim_ref),
            )
        )
    return Plan(tuple(notices), tuple(after))


def plan_reroute(holdings: Sequence[Holding], declined_partner: str, reason: str) -> Reroute:
    """A partner declined for ``reason`` (OUT_OF_JURISDICTION, ...): the next candidate, if any.

    The decliner is marked declined in every case (amendments no longer go to it). The target
    gets the decliner's priority; the caller builds its release from the target's own profile.
    """
    holding = next((h for h in holdings if h.partner == declined_partner), None)
    if holding is None:
        return Reroute(
            Plan((), tuple(holdings)),
            None,
            f"{declined_partner} never received the referral; nothing to re-route",
        )
    marked = tuple(replace(h, declined=True) if h is holding else h for h in holdings)
    if reason not in REROUTING_DECLINE_REASONS:
        return Reroute(
            Plan((), marked), None, f"a decline for {reason} is not re-routed; recorded only"
        )
    held = {h.partner for h in holdings}
    target = next((c for c in _CANDIDATES if c not in held and c != declined_partner), None)
    words = _DECLINE_WORDS.get(reason, f"({reason})")
    if target is None:
        return Reroute(
            Plan((), marked),
            None,
            f"{declined_partner} declined the referral {words}; the CCHT desk already has it, "
            "so nothing more is sent",
        )
    explanation = (
        f"{declined_partner} declined the referral {words}; no other partner of its kind "
        f"serves it, so {target} takes it over"
    )
    return Reroute(Plan((), marked), target, explanation, holding.priority)


# --- helpers --------------------------------------------------------------------------------


def _released_on(policy: Policy, partner: str, scope: ConsentScope) -> bool:
    """Whether the partner's profile releases identity on a consent of ``scope``.

    A partner the policy no longer knows is treated as releasing on it: when in doubt, recall.
    """
    profile = policy.release_profiles.get(partner)
    return profile is None or profile.victim_identity.consent_scope == scope


def _identity_in(release: PartnerRelease | None, victim_ref: str) -> VictimRelease | None:
    if release is None:
        return None
    return next((v for v in release.victim_identities if v.victim_ref == victim_ref), None)


def _with_identity(holding: Holding, release: VictimRelease) -> tuple[VictimRelease, ...]:
    return tuple(release if v.victim_ref == release.victim_ref else v for v in holding.identities)
