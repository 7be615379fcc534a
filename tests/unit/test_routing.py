"""Routing and release under the default policy, scenario by scenario from the domain note.

Each scenario states the whole expected outcome: the recipients with their priorities, the
matched rules, and for every recipient which victims' identities it receives on which basis and
which it does not. The field classes are checked against the release table transcribed here from
the domain note (not read from the YAML), so the tests also prove the shipped file implements it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from referral.domain.facts import (
    ConsentFact,
    ConsentScope,
    Indicator,
    LocationKind,
    Priority,
    ReferralFacts,
    ReleaseBasis,
    Sensitivity,
    VictimFacts,
)
from referral.domain.policy import Policy, default_policy_path, load_default_policy, load_policy
from referral.domain.routing import RoutingDecision, route_referral

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = load_default_policy()

LE = ConsentScope.LAW_ENFORCEMENT_CONTACT
VS = ConsentScope.VICTIM_SERVICES_REFERRAL
IR = ConsentScope.IMMIGRATION_RELIEF

OP = Sensitivity.OPERATIONAL
TRADE = Sensitivity.TRADE
LES = Sensitivity.LAW_ENFORCEMENT_SENSITIVE
NEEDS = Sensitivity.VICTIM_NEEDS
VID = Sensitivity.VICTIM_IDENTITY
REPORTER = Sensitivity.REPORTER_IDENTITY
IMM = Sensitivity.IMMIGRATION

# The domain note's "Default release rules" table, without VICTIM_IDENTITY (decided per victim).
RELEASE_TABLE: dict[str, frozenset[Sensitivity]] = {
    "hsi": frozenset({OP, TRADE, LES, NEEDS, REPORTER, IMM}),
    "cbp": frozenset({OP, TRADE, LES, NEEDS}),
    "uscg": frozenset({OP, TRADE, LES, NEEDS}),
    "hsi-vap": frozenset({OP, NEEDS, IMM}),
    "ngo-*": frozenset({OP, NEEDS}),
    "uscis": frozenset({OP, NEEDS, IMM}),
    "ccht": frozenset({OP, TRADE, LES, NEEDS, REPORTER, IMM}),
}

PP = "PARTNER_PROFILE"
CONSENT = "CONSENT"
MINOR = "MINOR_OVERRIDE"
DANGER = "IMMINENT_DANGER_OVERRIDE"


def consent(
    scope: ConsentScope,
    *,
    granted: datetime = NOW - timedelta(days=10),
    expires: datetime | None = NOW + timedelta(days=80),
    withdrawn: datetime | None = None,
) -> ConsentFact:
    return ConsentFact(scope, granted, expires, withdrawn)


def victim(
    ref: str,
    *,
    age: int | None = None,
    dob: date | None = None,
    nationality: str | None = None,
    state: str | None = None,
    consents: tuple[ConsentFact, ...] = (),
    identity: bool = True,
) -> VictimFacts:
    return VictimFacts(ref, age, dob, nationality, state, consents, identity)


def referral(
    *,
    source: str = "hsi-tipline",
    indicators: tuple[Indicator, ...] = (),
    victims: tuple[VictimFacts, ...] = (),
    danger: bool = False,
    kinds: tuple[LocationKind, ...] = (),
    states: tuple[str, ...] = (),
    vessel: bool = False,
    goods: bool = False,
) -> ReferralFacts:
    return ReferralFacts(
        referral_id="ref-1",
        source=source,
        indicators=frozenset(indicators),
        victims=victims,
        imminent_danger=danger,
        location_kinds=frozenset(kinds),
        location_states=states,
        vessel_involved=vessel,
        goods_destined_for_us=goods,
    )


@dataclass(frozen=True)
class Scenario:
    """A referral and everything the decision must say about it.

    ``identities`` and ``withheld`` list, per partner, the victims whose identity it receives
    (with the basis) and those removed from its copy; a partner not listed has neither.
    """

    name: str
    facts: ReferralFacts
    partners: dict[str, str]
    rules: tuple[str, ...]
    identities: dict[str, dict[str, str]] = field(default_factory=dict)
    withheld: dict[str, tuple[str, ...]] = field(default_factory=dict)
    now: datetime = NOW


SEX = Indicator.SEX_TRAFFICKING
LABOR = Indicator.LABOR_TRAFFICKING
CSE = Indicator.CHILD_SEXUAL_EXPLOITATION

MINOR_AT_HSI = Scenario(
    "placeholder",
    referral(),
    partners={"hsi": "URGENT", "hsi-vap": "URGENT", "ccht": "URGENT"},
    rules=("R1", "R2", "R7"),
    identities={"hsi": {"v1": MINOR}, "hsi-vap": {"v1": PP}, "ccht": {"v1": PP}},
)
ADULT_NO_CONSENT = Scenario(
    "placeholder",
    referral(),
    partners={"hsi": "HIGH", "hsi-vap": "HIGH"},
    rules=("R1", "R7"),
    identities={"hsi-vap": {"v1": PP}},
    withheld={"hsi": ("v1",)},
)


def like(template: Scenario, name: str, facts: ReferralFacts, now: datetime = NOW) -> Scenario:
    return Scenario(
        name, facts, template.partners, template.rules, template.identities, template.withheld, now
    )


SCENARIOS: list[Scenario] = [
    Scenario(
        "sex trafficking tip without victims goes to hsi",
        referral(indicators=(SEX,), kinds=(LocationKind.US_ADDRESS,), states=("MD",)),
        partners={"hsi": "HIGH"},
        rules=("R1",),
    ),
    like(
        MINOR_AT_HSI,
        "minor by stated age",
        referral(indicators=(SEX,), victims=(victim("v1", age=16, state="MD"),)),
    ),
    like(
        MINOR_AT_HSI,
        "minor by date of birth",
        referral(indicators=(SEX,), victims=(victim("v1", dob=date(2010, 7, 4)),)),
    ),
    like(
        ADULT_NO_CONSENT,
        "18th birthday today: an adult",
        referral(indicators=(SEX,), victims=(victim("v1", dob=date(2008, 3, 1)),)),
    ),
    like(
        MINOR_AT_HSI,
        "day before the 18th birthday: a minor",
        referral(indicators=(SEX,), victims=(victim("v1", dob=date(2008, 3, 2)),)),
    ),
    like(
        ADULT_NO_CONSENT,
        "18th birthday from its first instant",
        referral(indicators=(SEX,), victims=(victim("v1", dob=date(2008, 3, 1)),)),
        now=datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
    ),
    like(
        MINOR_AT_HSI,
        "last instant before the 18th birthday",
        referral(indicators=(SEX,), victims=(victim("v1", dob=date(2008, 3, 1)),)),
        now=datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC),
    ),
    like(
        ADULT_NO_CONSENT,
        "stated age 18 is an adult",
        referral(indicators=(SEX,), victims=(victim("v1", age=18),)),
    ),
    Scenario(
        "adult consented to law-enforcement contact",
        referral(indicators=(LABOR,), victims=(victim("v1", age=30, consents=(consent(LE),)),)),
        partners={"hsi": "HIGH", "hsi-vap": "HIGH"},
        rules=("R1", "R7"),
        identities={"hsi": {"v1": CONSENT}, "hsi-vap": {"v1": PP}},
    ),
    like(
        ADULT_NO_CONSENT,
        "expired consent withholds",
        referral(
            indicators=(LABOR,),
            victims=(
                victim(
                    "v1",
                    age=30,
                    consents=(
                        consent(
                            LE,
                            granted=NOW - timedelta(days=100),
                            expires=NOW - timedelta(days=1),
                        ),
                    ),
                ),
            ),
        ),
    ),
    like(
        ADULT_NO_CONSENT,
        "withdrawn consent withholds",
        referral(
            indicators=(LABOR,),
            victims=(
                victim("v1", age=30, consents=(consent(LE, withdrawn=NOW - timedelta(hours=1)),)),
            ),
        ),
    ),
    like(
        ADULT_NO_CONSENT,
        "consent expiring exactly now is no longer in force",
        referral(
            indicators=(LABOR,),
            victims=(victim("v1", age=30, consents=(consent(LE, expires=NOW),)),),
        ),
    ),
    like(
        ADULT_NO_CONSENT,
        "consent granted in the future is not yet in force",
        referral(
            indicators=(LABOR,),
            victims=(
                victim("v1", age=30, consents=(consent(LE, granted=NOW + timedelta(hours=1)),)),
            ),
        ),
    ),
    like(
        ADULT_NO_CONSENT,
        "consent without an expiry is not valid consent",
        referral(
            indicators=(LABOR,),
            victims=(victim("v1", age=30, consents=(consent(LE, expires=None),)),),
        ),
    ),
    Scenario(
        "a minor and a consenting adult: release per victim",
        referral(
            indicators=(LABOR,),
            victims=(
                victim("v1", age=25, state="GA", consents=(consent(VS), consent(LE))),
                victim("v2", age=15, state="GA"),
            ),
        ),
        partners={"hsi": "URGENT", "hsi-vap": "URGENT", "ccht": "URGENT", "ngo-southeast": "HIGH"},
        rules=("R1", "R2", "R7", "R8"),
        identities={
            "hsi": {"v1": CONSENT, "v2": MINOR},
            "hsi-vap": {"v1": PP, "v2": PP},
            "ccht": {"v1": PP, "v2": PP},
            "ngo-southeast": {"v1": CONSENT},
        },
        withheld={"ngo-southeast": ("v2",)},
    ),
    Scenario(
        "boarding at sea: consenting adult without a state gets no NGO",
        referral(
            source="uscg-boarding",
            indicators=(LABOR,),
            kinds=(LocationKind.AT_SEA,),
            vessel=True,
            victims=(victim("v1", age=40, nationality="PH", consents=(consent(VS),)),),
        ),
        partners={"hsi": "HIGH", "uscg": "HIGH", "hsi-vap": "HIGH"},
        rules=("R1", "R5", "R7", "R8"),
        identities={"hsi-vap": {"v1": PP}},
        withheld={"hsi": ("v1",), "uscg": ("v1",)},
    ),
    Scenario(
        "a vessel alone goes to the Coast Guard and hsi",
        referral(source="uscg-boarding", vessel=True),
        partners={"uscg": "HIGH", "hsi": "HIGH"},
        rules=("R5",),
    ),
    Scenario(
        "territories go to ngo-territories",
        referral(
            indicators=(LABOR,),
            victims=(victim("v1", age=33, state="PR", consents=(consent(VS),)),),
        ),
        partners={"hsi": "HIGH", "hsi-vap": "HIGH", "ngo-territories": "HIGH"},
        rules=("R1", "R7", "R8"),
        identities={"hsi-vap": {"v1": PP}, "ngo-territories": {"v1": CONSENT}},
        withheld={"hsi": ("v1",)},
    ),
    Scenario(
        "a state in no region gets no NGO",
        referral(
            indicators=(LABOR,),
            victims=(victim("v1", age=33, state="UM", consents=(consent(VS),)),),
        ),
        partners={"hsi": "HIGH", "hsi-vap": "HIGH"},
        rules=("R1", "R7", "R8"),
        identities={"hsi-vap": {"v1": PP}},
        withheld={"hsi": ("v1",)},
    ),
    Scenario(
        "airport screening hit goes to hsi and cbp",
        referral(source="cbp-ofo-screening", indicators=(SEX,), kinds=(LocationKind.AIRPORT,)),
        partners={"hsi": "HIGH", "cbp": "HIGH"},
        rules=("R1", "R6"),
    ),
    Scenario(
        "Blue Lightning crew reports a flight",
        referral(
            source="bli-airline",
            indicators=(SEX,),
            kinds=(LocationKind.FLIGHT,),
            victims=(victim("v1", age=22),),
        ),
        partners={"hsi": "HIGH", "cbp": "HIGH", "hsi-vap": "HIGH"},
        rules=("R1", "R6", "R7"),
        identities={"hsi-vap": {"v1": PP}},
        withheld={"hsi": ("v1",), "cbp": ("v1",)},
    ),
    Scenario(
        "bli-airline source alone matches R6",
        referral(source="bli-airline"),
        partners={"hsi": "HIGH", "cbp": "HIGH"},
        rules=("R6",),
    ),
    Scenario(
        "smuggling only goes to hsi, routinely",
        referral(
            source="cbp-ofo-screening",
            indicators=(Indicator.SMUGGLING,),
            kinds=(LocationKind.PORT_OF_ENTRY,),
        ),
        partners={"hsi": "ROUTINE"},
        rules=("R10",),
    ),
    Scenario(
        "smuggling with a trafficking indicator is R1, not R10",
        referral(indicators=(Indicator.SMUGGLING, Indicator.DEBT_BONDAGE)),
        partners={"hsi": "HIGH"},
        rules=("R1",),
    ),
    Scenario(
        "spotlight: forced labor in imported goods goes to cbp",
        referral(
            source="cbp-eallegations",
            indicators=(Indicator.FORCED_LABOR_IN_GOODS,),
            kinds=(LocationKind.ABROAD,),
            goods=True,
        ),
        partners={"cbp": "HIGH"},
        rules=("R4",),
    ),
    Scenario(
        "goods bound for the US without the indicator still go to cbp",
        referral(source="cbp-eallegations", goods=True),
        partners={"cbp": "HIGH"},
        rules=("R4",),
    ),
    Scenario(
        "imminent danger: all urgent, ccht added, identity on the override",
        referral(indicators=(LABOR,), danger=True, victims=(victim("v1", age=30),)),
        partners={"hsi": "URGENT", "hsi-vap": "URGENT", "ccht": "URGENT"},
        rules=("R1", "R3", "R7"),
        identities={"hsi": {"v1": DANGER}, "hsi-vap": {"v1": PP}, "ccht": {"v1": PP}},
    ),
    Scenario(
        "imminent danger: consent and the minor override are named before danger",
        referral(
            indicators=(SEX,),
            danger=True,
            victims=(
                victim("v1", age=14),
                victim("v2", age=30, consents=(consent(LE),)),
                victim("v3", age=30),
            ),
        ),
        partners={"hsi": "URGENT", "hsi-vap": "URGENT", "ccht": "URGENT"},
        rules=("R1", "R2", "R3", "R7"),
        identities={
            "hsi": {"v1": MINOR, "v2": CONSENT, "v3": DANGER},
            "hsi-vap": {"v1": PP, "v2": PP, "v3": PP},
            "ccht": {"v1": PP, "v2": PP, "v3": PP},
        },
    ),
    Scenario(
        "imminent danger alone goes to ccht, urgently, not via R0",
        referral(source="fema", danger=True),
        partners={"ccht": "URGENT"},
        rules=("R3",),
    ),
    Scenario(
        "imminent danger raises every recipient already chosen",
        referral(
            source="uscg-boarding",
            indicators=(Indicator.FORCED_LABOR_IN_GOODS,),
            vessel=True,
            danger=True,
        ),
        partners={"cbp": "URGENT", "uscg": "URGENT", "hsi": "URGENT", "ccht": "URGENT"},
        rules=("R3", "R4", "R5"),
    ),
    Scenario(
        "no rule claims it: R0 sends it to ccht for triage",
        referral(source="fema", kinds=(LocationKind.US_ADDRESS,), states=("TX",)),
        partners={"ccht": "ROUTINE"},
        rules=("R0",),
    ),
    Scenario(
        "non-US victim consented to immigration relief goes to uscis",
        referral(
            indicators=(LABOR,),
            victims=(victim("v1", age=28, nationality="GT", state="TX", consents=(consent(IR),)),),
        ),
        partners={"hsi": "HIGH", "hsi-vap": "HIGH", "uscis": "ROUTINE"},
        rules=("R1", "R7", "R9"),
        identities={"hsi-vap": {"v1": PP}, "uscis": {"v1": CONSENT}},
        withheld={"hsi": ("v1",)},
    ),
    like(
        ADULT_NO_CONSENT,
        "unknown nationality does not go to uscis",
        referral(indicators=(LABOR,), victims=(victim("v1", age=28, consents=(consent(IR),)),)),
    ),
    like(
        ADULT_NO_CONSENT,
        "a US national does not go to uscis",
        referral(
            indicators=(LABOR,),
            victims=(victim("v1", age=28, nationality="US", consents=(consent(IR),)),),
        ),
    ),
    Scenario(
        "unnamed victims: nothing to release or withhold",
        referral(indicators=(LABOR,), victims=(victim("v1", identity=False),)),
        partners={"hsi": "HIGH", "hsi-vap": "HIGH"},
        rules=("R1", "R7"),
    ),
    Scenario(
        "a minor with victim-services consent goes via R2, not to an NGO",
        referral(
            indicators=(SEX,), victims=(victim("v1", age=16, state="CA", consents=(consent(VS),)),)
        ),
        partners={"hsi": "URGENT", "hsi-vap": "URGENT", "ccht": "URGENT"},
        rules=("R1", "R2", "R7"),
        identities={"hsi": {"v1": MINOR}, "hsi-vap": {"v1": PP}, "ccht": {"v1": PP}},
    ),
    Scenario(
        "two consenting adults in two regions: each NGO learns only its own victim",
        referral(
            indicators=(LABOR,),
            victims=(
                victim("v1", age=30, state="CA", consents=(consent(VS),)),
                victim("v2", age=31, state="TX", consents=(consent(VS),)),
            ),
        ),
        partners={"hsi": "HIGH", "hsi-vap": "HIGH", "ngo-west": "HIGH", "ngo-southwest": "HIGH"},
        rules=("R1", "R7", "R8"),
        identities={
            "hsi-vap": {"v1": PP, "v2": PP},
            "ngo-west": {"v1": CONSENT},
            "ngo-southwest": {"v2": CONSENT},
        },
        withheld={"hsi": ("v1", "v2"), "ngo-west": ("v2",), "ngo-southwest": ("v1",)},
    ),
    Scenario(
        "spotlight: HSI Baltimore, informant tip, eight victims, minors among them",
        referral(
            indicators=(SEX, CSE),
            kinds=(LocationKind.US_ADDRESS,),
            states=("MD",),
            victims=(
                victim("v1", age=15, state="MD"),
                victim("v2", age=16, state="MD"),
                victim("v3", dob=date(2009, 1, 10), state="MD"),
                *(victim(f"v{i}", age=19 + i, state="MD") for i in range(4, 9)),
            ),
        ),
        partners={"hsi": "URGENT", "hsi-vap": "URGENT", "ccht": "URGENT"},
        rules=("R1", "R2", "R7"),
        identities={
            "hsi": {"v1": MINOR, "v2": MINOR, "v3": MINOR},
            "hsi-vap": {f"v{i}": PP for i in range(1, 9)},
            "ccht": {f"v{i}": PP for i in range(1, 9)},
        },
        withheld={"hsi": tuple(f"v{i}" for i in range(4, 9))},
    ),
    Scenario(
        "spotlight: Operation Blooming Onion, smuggled farm workers in Georgia",
        referral(
            indicators=(
                LABOR,
                Indicator.DOCUMENT_SERVITUDE,
                Indicator.DEBT_BONDAGE,
                Indicator.SMUGGLING,
            ),
            kinds=(LocationKind.US_ADDRESS,),
            states=("GA",),
            victims=(
                victim(
                    "v1", age=34, nationality="MX", state="GA", consents=(consent(VS), consent(IR))
                ),
                victim("v2", age=27, nationality="GT", state="GA", consents=(consent(VS),)),
                victim("v3", age=41, nationality="MX", state="GA"),
            ),
        ),
        partners={"hsi": "HIGH", "hsi-vap": "HIGH", "ngo-southeast": "HIGH", "uscis": "ROUTINE"},
        rules=("R1", "R7", "R8", "R9"),
        identities={
            "hsi-vap": {"v1": PP, "v2": PP, "v3": PP},
            "ngo-southeast": {"v1": CONSENT, "v2": CONSENT},
            "uscis": {"v1": CONSENT},
        },
        withheld={"hsi": ("v1", "v2", "v3"), "ngo-southeast": ("v3",), "uscis": ("v2", "v3")},
    ),
]


def table_classes(partner: str) -> frozenset[Sensitivity]:
    return RELEASE_TABLE["ngo-*" if partner.startswith("ngo-") else partner]


def assert_no_personal_data(decision: RoutingDecision, facts: ReferralFacts) -> None:
    """Reasons may name victim refs and counts, never ages, dates of birth, victims' states or
    nationalities. (Ages under 13 are not checked: they collide with counts such as "3 potential
    victims"; "US" is not checked because "not a US national" is the point of rule R9.)"""
    for match in decision.matched_rules:
        for v in facts.victims:
            if v.age is not None and v.age >= 13:
                assert not re.search(rf"\b{v.age}\b", match.reason), match
            if v.date_of_birth is not None:
                assert str(v.date_of_birth.year) not in match.reason, match
            if v.us_state is not None:
                assert not re.search(rf"\b{v.us_state}\b", match.reason), match
            if v.nationality not in (None, "US"):
                assert not re.search(rf"\b{v.nationality}\b", match.reason), match


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario) -> None:
    decision = route_referral(scenario.facts, POLICY, scenario.now)

    assert decision.policy_version == POLICY.version
    assert decision.matched_rule_ids == scenario.rules
    assert {p.partner: p.priority.value for p in decision.partners} == scenario.partners
    assert decision.recipients == tuple(sorted(scenario.partners))
    assert decision.priority == max(Priority(p) for p in scenario.partners.values())

    for release in decision.partners:
        expected_ids = scenario.identities.get(release.partner, {})
        got_ids = {r.victim_ref: r.basis.value for r in release.victim_identities}
        assert got_ids == expected_ids, release.partner
        assert release.withheld_victim_refs == scenario.withheld.get(release.partner, ()), (
            release.partner
        )
        expected_classes = table_classes(release.partner) | ({VID} if expected_ids else set())
        assert release.released_classes == expected_classes, release.partner
        # Every rule listed for a partner is a matched rule that routes to it.
        assert set(release.rule_ids) <= set(decision.matched_rule_ids)
    for partner in set(scenario.identities) | set(scenario.withheld):
        assert partner in scenario.partners, f"scenario lists a non-recipient {partner}"

    assert all(m.reason for m in decision.matched_rules)
    assert_no_personal_data(decision, scenario.facts)


def test_scenario_table_is_large_enough() -> None:
    assert len(SCENARIOS) >= 25


# --- rule ids, reasons and determinism ---------------------------------------------------------


def test_rule_ids_per_partner_are_in_policy_order() -> None:
    facts = referral(
        indicators=(SEX,),
        danger=True,
        kinds=(LocationKind.AIRPORT,),
        victims=(victim("v1", age=15),),
    )
    decision = route_referral(facts, POLICY, NOW)
    hsi = decision.partner("hsi")
    assert hsi is not None
    assert hsi.rule_ids == ("R1", "R2", "R3", "R6")
    cbp = decision.partner("cbp")
    assert cbp is not None
    assert (cbp.rule_ids, cbp.priority) == (("R3", "R6"), Priority.URGENT)
    ccht = decision.partner("ccht")
    assert ccht is not None
    assert ccht.rule_ids == ("R2", "R3")
    assert decision.partner("uscis") is None


def test_reasons_explain_in_words() -> None:
    facts = referral(
        indicators=(LABOR, Indicator.DEBT_BONDAGE),
        danger=True,
        victims=(
            victim("v1", age=16),
            victim("v2", age=30, state="GA", consents=(consent(VS),)),
            victim("v3", age=30, consents=(consent(VS),)),
        ),
    )
    reasons = {m.rule_id: m.reason for m in route_referral(facts, POLICY, NOW).matched_rules}
    assert reasons["R1"] == "trafficking indicators: DEBT_BONDAGE, LABOR_TRAFFICKING"
    assert reasons["R2"] == "victim v1 is a minor"
    assert reasons["R3"] == "imminent danger is flagged; applies to the 4 recipients already chosen"
    assert reasons["R7"] == "3 potential victims identified"
    assert reasons["R8"] == (
        "adult victims v2, v3 consented to a victim-services referral; ngo-southeast for victim "
        "v2; victim v3 has no state in an NGO region, so no NGO"
    )


def test_r0_reason_and_r10_reason() -> None:
    r0 = route_referral(referral(source="usss"), POLICY, NOW)
    assert [(m.rule_id, m.reason) for m in r0.matched_rules] == [
        ("R0", "no other rule chose a recipient")
    ]
    r10 = route_referral(referral(indicators=(Indicator.SMUGGLING,)), POLICY, NOW)
    assert r10.matched_rules[0].reason == "smuggling indicators only, no trafficking indicator"


def test_long_victim_lists_are_shortened_in_reasons() -> None:
    facts = referral(victims=tuple(victim(f"v{i}", age=10) for i in range(1, 31)))
    reasons = {m.rule_id: m.reason for m in route_referral(facts, POLICY, NOW).matched_rules}
    assert reasons["R2"] == "victims v1, v2, v3, v4, v5, v6, v7, v8, v9, v10 and 20 more are minors"


def test_decision_is_deterministic() -> None:
    scenario = SCENARIOS[-1]
    first = route_referral(scenario.facts, POLICY, NOW)
    assert all(route_referral(scenario.facts, POLICY, NOW) == first for _ in range(3))
    # A second load of the same file is a different object with the same version and outcome.
    again = route_referral(scenario.facts, load_policy(default_policy_path()), NOW)
    assert again == first


# --- the victim facts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dob", "today", "minor"),
    [
        (date(2008, 3, 1), date(2026, 3, 1), False),
        (date(2008, 3, 1), date(2026, 2, 28), True),
        (date(2008, 2, 29), date(2026, 2, 28), True),  # leap-day birthday: 18 on 1 March
        (date(2008, 2, 29), date(2026, 3, 1), False),
        (date(2008, 12, 31), date(2026, 12, 31), False),
        (date(2009, 1, 1), date(2026, 12, 31), True),
    ],
)
def test_is_minor_from_date_of_birth(dob: date, today: date, minor: bool) -> None:
    now = datetime(today.year, today.month, today.day, 12, tzinfo=UTC)
    assert victim("v", dob=dob).is_minor(now) is minor


def test_is_minor_when_age_and_date_of_birth_disagree() -> None:
    # A stated age under 18 is taken seriously even against a date of birth (possibly a false
    # document); unknown age is not minority.
    assert victim("v", age=16, dob=date(1990, 1, 1)).is_minor(NOW)
    assert victim("v", age=30, dob=date(2015, 1, 1)).is_minor(NOW)
    assert not victim("v").is_minor(NOW)


def test_consent_in_force() -> None:
    v = victim(
        "v",
        consents=(
            consent(LE, withdrawn=NOW),
            consent(VS, expires=NOW + timedelta(seconds=1)),
        ),
    )
    assert not v.consent_in_force(LE, NOW)
    assert v.consent_in_force(LE, NOW - timedelta(seconds=1))
    assert v.consent_in_force(VS, NOW)
    assert not v.consent_in_force(VS, NOW + timedelta(seconds=1))
    assert not v.consent_in_force(IR, NOW)


def test_nationality() -> None:
    assert victim("v", nationality="US").is_us_national
    assert not victim("v", nationality="MX").is_us_national
    assert victim("v", nationality="MX").is_known_non_us_national
    unknown = victim("v")
    assert not unknown.is_us_national
    assert not unknown.is_known_non_us_national


def test_priority_is_ordered_by_urgency() -> None:
    assert Priority.ROUTINE < Priority.HIGH < Priority.URGENT
    assert max(Priority.HIGH, Priority.URGENT, Priority.ROUTINE) is Priority.URGENT
    assert sorted(Priority) == [Priority.ROUTINE, Priority.HIGH, Priority.URGENT]
    assert [p.rank for p in Priority] == [1, 2, 3]
    assert Priority.HIGH >= Priority.HIGH
    with pytest.raises(TypeError):
        _ = Priority.HIGH < "URGENT"
    with pytest.raises(TypeError):
        _ = "ROUTINE" > Priority.HIGH  # noqa: SIM300 - the plain string on the left is the point


# --- operators extend the policy without code changes -----------------------------------------

OPERATOR_ADDITIONS = {
    # a new partner ...
    "  ccht: Center for": (
        "  dol-whd: Department of Labor, Wage and Hour Division\n"
        "  ngo-pacific: Victim-advocacy NGO, Pacific\n"
        "  ccht: Center for"
    ),
    # ... a new NGO region carved out of the West ...
    "  ngo-west: [CA, NV, UT, CO, WY, MT, ID, OR, WA, AK, HI]\n": (
        "  ngo-west: [CA, NV, UT, CO, WY, MT, ID, OR, WA, AK]\n  ngo-pacific: [HI, GU, AS, MP]\n"
    ),
    "  ngo-territories: [PR, VI, GU, AS, MP]\n": "  ngo-territories: [PR, VI]\n",
    # ... its release profile (the NGO one comes from the ngo-* pattern) ...
    "  ccht:\n    classes": (
        "  dol-whd:\n"
        "    classes: [OPERATIONAL, LAW_ENFORCEMENT_SENSITIVE]\n"
        "    victim_identity: never\n"
        "  ccht:\n    classes"
    ),
    # ... and a rule.
    "  - id: R0\n": (
        "  - id: R11\n"
        "    description: Forced labor in Texas or California also goes to the Wage and Hour "
        "Division.\n"
        "    when:\n"
        "      - has_indicator: [FORCED_LABOR_IN_US, DEBT_BONDAGE]\n"
        "      - location_state_in: [TX, CA]\n"
        "    route_to: [dol-whd]\n"
        "    priority: HIGH\n"
        "\n"
        "  - id: R0\n"
    ),
}


@pytest.fixture(scope="module")
def operator_policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    text = default_policy_path().read_text(encoding="utf-8")
    for old, new in OPERATOR_ADDITIONS.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path_factory.mktemp("policy") / "operator.yaml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path)


def test_operator_added_partner_rule_and_profile_route_without_code_changes(
    operator_policy: Policy,
) -> None:
    facts = referral(
        indicators=(Indicator.FORCED_LABOR_IN_US,),
        kinds=(LocationKind.US_ADDRESS,),
        states=("TX",),
        victims=(victim("v1", age=15),),
    )
    decision = route_referral(facts, operator_policy, NOW)
    assert decision.policy_version != POLICY.version
    assert decision.matched_rule_ids == ("R1", "R2", "R7", "R11")
    dol = decision.partner("dol-whd")
    assert dol is not None
    assert dol.priority is Priority.HIGH
    assert dol.rule_ids == ("R11",)
    assert dol.released_classes == {OP, LES}
    # "never": not even the minor override releases identity to this partner.
    assert dol.victim_identities == ()
    assert dol.withheld_victim_refs == ("v1",)
    hsi = decision.partner("hsi")
    assert hsi is not None
    assert [(r.victim_ref, r.basis) for r in hsi.victim_identities] == [
        ("v1", ReleaseBasis.MINOR_OVERRIDE)
    ]
    # Not in TX or CA: the new rule does not match.
    elsewhere = route_referral(
        referral(indicators=(Indicator.FORCED_LABOR_IN_US,), states=("OH",)), operator_policy, NOW
    )
    assert elsewhere.recipients == ("hsi",)


def test_operator_added_ngo_region_uses_the_pattern_profile(operator_policy: Policy) -> None:
    facts = referral(
        indicators=(LABOR,),
        victims=(
            victim("v1", age=30, state="HI", consents=(consent(VS),)),
            victim("v2", age=30, state="GU", consents=(consent(VS),)),
            victim("v3", age=30, state="CA", consents=(consent(VS),)),
        ),
    )
    decision = route_referral(facts, operator_policy, NOW)
    pacific = decision.partner("ngo-pacific")
    assert pacific is not None
    assert pacific.released_classes == {OP, NEEDS, VID}
    assert [r.victim_ref for r in pacific.victim_identities] == ["v1", "v2"]
    assert pacific.withheld_victim_refs == ("v3",)
    assert decision.partner("ngo-territories") is None
    assert decision.partner("ngo-west") is not None


# --- properties over arbitrary referrals -------------------------------------------------------

_consents = st.builds(
    ConsentFact,
    scope=st.sampled_from(ConsentScope),
    granted_at=st.sampled_from([NOW - timedelta(days=5), NOW + timedelta(days=1)]),
    expires_at=st.sampled_from([None, NOW - timedelta(days=1), NOW + timedelta(days=5)]),
    withdrawn_at=st.sampled_from([None, NOW - timedelta(hours=1), NOW + timedelta(hours=1)]),
)
_victims = st.lists(
    st.builds(
        VictimFacts,
        victim_ref=st.sampled_from(["v1", "v2", "v3", "v4"]),
        age=st.one_of(st.none(), st.integers(0, 90)),
        date_of_birth=st.one_of(st.none(), st.dates(date(1940, 1, 1), date(2026, 3, 1))),
        nationality=st.sampled_from([None, "US", "MX", "PH"]),
        us_state=st.sampled_from([None, "GA", "CA", "PR", "UM", "NY"]),
        consents=st.lists(_consents, max_size=3).map(tuple),
        has_identity=st.booleans(),
    ),
    max_size=4,
    unique_by=lambda v: v.victim_ref,
).map(tuple)
_referrals = st.builds(
    ReferralFacts,
    referral_id=st.just("ref"),
    source=st.sampled_from(["hsi-tipline", "nht-hotline", "bli-airline", "fema", "uscg-boarding"]),
    indicators=st.frozensets(st.sampled_from(Indicator)),
    victims=_victims,
    imminent_danger=st.booleans(),
    location_kinds=st.frozensets(st.sampled_from(LocationKind)),
    location_states=st.lists(st.sampled_from(["GA", "TX"]), max_size=2).map(tuple),
    vessel_involved=st.booleans(),
    goods_destined_for_us=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(facts=_referrals)
def test_release_invariants(facts: ReferralFacts) -> None:
    decision = route_referral(facts, POLICY, NOW)
    identity_refs = [v.victim_ref for v in facts.victims if v.has_identity]
    minors = {v.victim_ref for v in facts.victims if v.is_minor(NOW)}

    # Nothing is silently dropped, and R0 applies exactly when nothing else chose anyone.
    assert decision.partners
    others = [r for r in decision.matched_rule_ids if r != "R0"]
    assert ("R0" in decision.matched_rule_ids) == (not others)
    if not others:
        assert decision.recipients == ("ccht",)
        assert decision.priority is Priority.ROUTINE
    assert decision.priority == max(p.priority for p in decision.partners)
    assert list(decision.recipients) == sorted(decision.recipients)
    if facts.imminent_danger:
        assert all(p.priority is Priority.URGENT for p in decision.partners)
        assert "ccht" in decision.recipients

    for release in decision.partners:
        released = {r.victim_ref: r.basis for r in release.victim_identities}
        # Each identity-bearing victim is either released or withheld; others never appear.
        assert sorted([*released, *release.withheld_victim_refs]) == sorted(identity_refs)
        assert (VID in release.released_classes) == bool(released)
        assert release.released_classes - {VID} == table_classes(release.partner)
        for ref, basis in released.items():
            v = next(v for v in facts.victims if v.victim_ref == ref)
            if basis is ReleaseBasis.CONSENT:
                assert any(v.consent_in_force(scope, NOW) for scope in ConsentScope)
            if basis is ReleaseBasis.MINOR_OVERRIDE:
                assert ref in minors
            if basis is ReleaseBasis.IMMINENT_DANGER_OVERRIDE:
                assert facts.imminent_danger
            if basis is ReleaseBasis.PARTNER_PROFILE:
                assert release.partner in ("hsi-vap", "ccht")
        if release.partner in ("hsi", "cbp", "uscg"):
            for ref in release.withheld_victim_refs:
                v = next(v for v in facts.victims if v.victim_ref == ref)
                assert not facts.imminent_danger
                assert ref not in minors
                assert not v.consent_in_force(LE, NOW)
        if release.partner.startswith("ngo-"):
            for ref, basis in released.items():
                v = next(v for v in facts.victims if v.victim_ref == ref)
                assert basis is ReleaseBasis.CONSENT
                assert v.consent_in_force(VS, NOW)
                assert POLICY.ngo_by_state.get(v.us_state or "") == release.partner
        if release.partner == "uscis":
            for ref in released:
                v = next(v for v in facts.victims if v.victim_ref == ref)
                assert v.consent_in_force(IR, NOW)

    assert_no_personal_data(decision, facts)
