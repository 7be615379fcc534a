"""The facts of a referral that routing and release depend on, as plain frozen dataclasses.

Why a separate model instead of the protobuf messages: the policy must stay pure and testable
without generated code, and it must only ever see what it needs to decide. Names, phone numbers
and addresses are deliberately absent: the router decides *whether* a victim's identity may go
to a partner (``has_identity``), never what it is, so no decision, reason or log built from these
facts can leak it.

All datetimes must be timezone-aware (the adapter converts protobuf Timestamps to UTC); mixing
naive and aware datetimes raises ``TypeError`` rather than silently comparing wrong instants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

# The age below which a person is a minor, for the override of consent and for rule R2.
ADULT_AGE = 18


class Indicator(StrEnum):
    """A kind of exploitation the source suspects (the proto enum without ``INDICATOR_``)."""

    SEX_TRAFFICKING = "SEX_TRAFFICKING"
    LABOR_TRAFFICKING = "LABOR_TRAFFICKING"
    CHILD_SEXUAL_EXPLOITATION = "CHILD_SEXUAL_EXPLOITATION"
    DOCUMENT_SERVITUDE = "DOCUMENT_SERVITUDE"
    DEBT_BONDAGE = "DEBT_BONDAGE"
    FORCED_LABOR_IN_US = "FORCED_LABOR_IN_US"
    FORCED_LABOR_IN_GOODS = "FORCED_LABOR_IN_GOODS"
    SMUGGLING = "SMUGGLING"


# The indicators of trafficking in persons (rule R1 of the domain note). Forced labor in goods is
# a supply-chain allegation about production abroad, and smuggling is consensual border crossing;
# neither is trafficking of people in the US on its own, so neither is listed.
TRAFFICKING_INDICATORS: frozenset[Indicator] = frozenset(
    {
        Indicator.SEX_TRAFFICKING,
        Indicator.LABOR_TRAFFICKING,
        Indicator.CHILD_SEXUAL_EXPLOITATION,
        Indicator.DOCUMENT_SERVITUDE,
        Indicator.DEBT_BONDAGE,
        Indicator.FORCED_LABOR_IN_US,
    }
)


class ConsentScope(StrEnum):
    """The purpose a victim's consent covers (the proto enum without ``CONSENT_SCOPE_``)."""

    LAW_ENFORCEMENT_CONTACT = "LAW_ENFORCEMENT_CONTACT"
    VICTIM_SERVICES_REFERRAL = "VICTIM_SERVICES_REFERRAL"
    IMMIGRATION_RELIEF = "IMMIGRATION_RELIEF"


class LocationKind(StrEnum):
    """The sort of place a location is (the proto enum without ``LOCATION_KIND_``)."""

    US_ADDRESS = "US_ADDRESS"
    PORT_OF_ENTRY = "PORT_OF_ENTRY"
    AIRPORT = "AIRPORT"
    FLIGHT = "FLIGHT"
    AT_SEA = "AT_SEA"
    ABROAD = "ABROAD"


class Sensitivity(StrEnum):
    """A class of fields, by the harm they can do in the wrong hands (``SENSITIVITY_`` stripped)."""

    OPERATIONAL = "OPERATIONAL"
    TRADE = "TRADE"
    LAW_ENFORCEMENT_SENSITIVE = "LAW_ENFORCEMENT_SENSITIVE"
    VICTIM_NEEDS = "VICTIM_NEEDS"
    VICTIM_IDENTITY = "VICTIM_IDENTITY"
    REPORTER_IDENTITY = "REPORTER_IDENTITY"
    IMMIGRATION = "IMMIGRATION"


class Priority(StrEnum):
    """How fast partners must act: ``ROUTINE < HIGH < URGENT``.

    A string enum like the others (so the policy file, the proto names and this enum all spell it
    the same), but ordered by urgency rather than alphabetically, so ``max()`` picks the most
    urgent. ``rank`` matches the proto enum number (ROUTINE 1, HIGH 2, URGENT 3).
    """

    ROUTINE = "ROUTINE"
    HIGH = "HIGH"
    URGENT = "URGENT"

    @property
    def rank(self) -> int:
        """The urgency as a number, equal to the proto enum value."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        """The priority with this rank (1 to 3)."""
        return _PRIORITY_BY_RANK[rank]

    # Comparisons are by urgency. Comparing with anything but a Priority (a plain string in
    # particular) is refused rather than falling back to string order, which would silently rank
    # HIGH below ROUTINE.
    def __lt__(self, other: object) -> bool:
        return _PRIORITY_RANK[self] < _rank_of(other)

    def __le__(self, other: object) -> bool:
        return _PRIORITY_RANK[self] <= _rank_of(other)

    def __gt__(self, other: object) -> bool:
        return _PRIORITY_RANK[self] > _rank_of(other)

    def __ge__(self, other: object) -> bool:
        return _PRIORITY_RANK[self] >= _rank_of(other)


_PRIORITY_RANK: dict[Priority, int] = {Priority.ROUTINE: 1, Priority.HIGH: 2, Priority.URGENT: 3}
_PRIORITY_BY_RANK: dict[int, Priority] = {rank: p for p, rank in _PRIORITY_RANK.items()}


def _rank_of(other: object) -> int:
    if not isinstance(other, Priority):
        raise TypeError(f"a Priority can only be compared with a Priority, not {other!r}")
    return _PRIORITY_RANK[other]


class ReleaseBasis(StrEnum):
    """The legal ground on which a victim's identity went to a partner (``RELEASE_BASIS_``)."""

    PARTNER_PROFILE = "PARTNER_PROFILE"
    CONSENT = "CONSENT"
    MINOR_OVERRIDE = "MINOR_OVERRIDE"
    IMMINENT_DANGER_OVERRIDE = "IMMINENT_DANGER_OVERRIDE"


@dataclass(frozen=True, slots=True)
class ConsentFact:
    """One recorded consent of a victim: informed, written, time-limited, withdrawable."""

    scope: ConsentScope
    granted_at: datetime
    expires_at: datetime | None
    withdrawn_at: datetime | None

    def in_force(self, now: datetime) -> bool:
        """Whether the consent covers ``now``: granted, not yet expired, not withdrawn.

        The bounds are half-open, ``granted_at <= now < expires_at``: at the instant of expiry or
        withdrawal the consent no longer holds. A consent without an expiry is *not* in force:
        the confidentiality rules (VAWA, FVPSA, VOCA) only recognise time-limited consent and the
        contract requires ``expires_at``, so a record missing it is treated as invalid, failing
        closed rather than releasing identity forever.
        """
        if self.expires_at is None or now < self.granted_at or now >= self.expires_at:
            return False
        return self.withdrawn_at is None or now < self.withdrawn_at


def age_on(date_of_birth: date, today: date) -> int:
    """Completed years of age on ``today``; one's age goes up on the birthday itself.

    Someone born on 29 February turns a year older on 1 March in common years (the later of the
    two usual readings, so a minor stays protected as a minor until the date is unambiguous).
    """
    had_birthday = (today.month, today.day) >= (date_of_birth.month, date_of_birth.day)
    return today.year - date_of_birth.year - (0 if had_birthday else 1)


@dataclass(frozen=True, slots=True)
class VictimFacts:
    """What the policy knows about one potential victim (named or an unnamed group).

    ``has_identity`` says whether the entry carries any identifying field (name, date of birth,
    contact, address, documents, description); an entry without any has nothing to release or
    withhold. ``date_of_birth`` is here only to compute minority; it never leaves this object.
    """

    victim_ref: str
    age: int | None
    date_of_birth: date | None
    nationality: str | None
    us_state: str | None
    consents: tuple[ConsentFact, ...]
    has_identity: bool

    def is_minor(self, now: datetime) -> bool:
        """Whether the victim is under 18 at ``now``, from the stated age or the date of birth.

        When both are present and disagree the victim counts as a minor: a stated or estimated
        age under 18 is taken seriously even if a (possibly false) document says otherwise, in
        line with treating a person as a child while their age is in doubt. The birthday is
        judged on the calendar date of ``now`` in ``now``'s own timezone (UTC from the adapter).
        Unknown age is not minority: nothing is known to override consent for.
        """
        if self.age is not None and self.age < ADULT_AGE:
            return True
        if self.date_of_birth is not None:
            return age_on(self.date_of_birth, now.date()) < ADULT_AGE
        return False

    def consent_in_force(self, scope: ConsentScope, now: datetime) -> bool:
        """Whether some consent of this scope is in force at ``now`` (see ConsentFact.in_force)."""
        return any(c.scope == scope and c.in_force(now) for c in self.consents)

    @property
    def is_us_national(self) -> bool:
        """Whether the recorded nationality is the United States."""
        return self.nationality == "US"

    @property
    def is_known_non_us_national(self) -> bool:
        """Whether a nationality is recorded and it is not the US.

        Not simply ``not is_us_national``: an unknown nationality says nothing, so it must not
        send the victim to immigration screening (rule R9).
        """
        return bool(self.nationality) and self.nationality != "US"


@dataclass(frozen=True, slots=True)
class ReferralFacts:
    """What the policy knows about one referral.

    ``location_states`` are the two-letter US state or territory codes of the referral's
    locations; ``goods_destined_for_us`` is set when any goods allegation is bound for the US.
    """

    referral_id: str
    source: str
    indicators: frozenset[Indicator]
    victims: tuple[VictimFacts, ...]
    imminent_danger: bool
    location_kinds: frozenset[LocationKind]
    location_states: tuple[str, ...]
    vessel_involved: bool
    goods_destined_for_us: bool
