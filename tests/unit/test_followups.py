"""The follow-ups of a routed referral, decided without Kafka: amendments, withdrawals, consent
changes and declines (``referral.domain.followups``), and ``release_to``, which gives a partner
outside the rules exactly what its release profile allows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from referral.domain.facts import (
    ConsentFact,
    ConsentScope,
    Indicator,
    Priority,
    ReferralFacts,
    ReleaseBasis,
    Sensitivity,
    VictimFacts,
)
from referral.domain.followups import (
    REROUTE_RULE_ID,
    ConsentChange,
    Holding,
    NoticeKind,
    ReferralState,
    apply_consent_changes,
    plan_amendment,
    plan_new_recipients,
    plan_recalls,
    plan_reroute,
    plan_submission,
    plan_withdrawal,
)
from referral.domain.policy import load_default_policy
from referral.domain.routing import PartnerRelease, VictimRelease, release_to, route_referral

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
POLICY = load_default_policy()
LE = ConsentScope.LAW_ENFORCEMENT_CONTACT
VS = ConsentScope.VICTIM_SERVICES_REFERRAL
IR = ConsentScope.IMMIGRATION_RELIEF


def consent(scope: ConsentScope, granted: datetime = NOW - HOUR) -> ConsentFact:
    return ConsentFact(scope, granted, NOW + 30 * 24 * HOUR, None)


def victim(
    *consents: ConsentFact, age: int = 30, nationality: str = "MX", state: str = "TX"
) -> VictimFacts:
    return VictimFacts("v1", age, None, nationality, state, tuple(consents), True)


def facts(*victims: VictimFacts, danger: bool = False) -> ReferralFacts:
    return ReferralFacts(
        referral_id="ref-1",
        source="nht-hotline",
        indicators=frozenset({Indicator.SEX_TRAFFICKING}),
        victims=victims,
        imminent_danger=danger,
        location_kinds=frozenset(),
        location_states=(),
        vessel_involved=False,
        goods_destined_for_us=False,
    )


def holding(partner: str, *identities: tuple[str, ReleaseBasis], **flags: bool) -> Holding:
    return Holding(
        partner,
        Priority.HIGH,
        ("R1",),
        tuple(VictimRelease(ref, basis) for ref, basis in identities),
        **flags,
    )


# --- consent changes --------------------------------------------------------------------------


def test_a_withdrawal_marks_earlier_consents_of_its_scope_only() -> None:
    le, vs = consent(LE), consent(VS)
    after = apply_consent_changes([le, vs], [ConsentChange("v1", LE, NOW, withdrawn=True)])
    assert after == (
        ConsentFact(LE, le.granted_at, le.expires_at, NOW),
        vs,
    )
    assert not after[0].in_force(NOW)
    assert after[1].in_force(NOW)


def test_a_consent_given_after_the_withdrawal_stands() -> None:
    again = consent(LE, granted=NOW + HOUR)
    after = apply_consent_changes([again], [ConsentChange("v1", LE, NOW, withdrawn=True)])
    assert after == (again,)


def test_an_earlier_withdrawal_time_is_kept() -> None:
    earlier = ConsentFact(LE, NOW - 2 * HOUR, NOW + HOUR, NOW - HOUR)
    (after,) = apply_consent_changes([earlier], [ConsentChange("v1", LE, NOW, withdrawn=True)])
    assert after.withdrawn_at == NOW - HOUR


def test_a_grant_replaces_earlier_consents_of_its_scope_and_adds_when_none() -> None:
    old = ConsentFact(IR, NOW - 2 * HOUR, NOW + HOUR, NOW - HOUR)
    expires = NOW + 90 * 24 * HOUR
    grant = ConsentChange("v1", IR, NOW, expires_at=expires)
    assert apply_consent_changes([old], [grant]) == (ConsentFact(IR, NOW, expires, None),)
    assert apply_consent_changes([], [grant]) == (ConsentFact(IR, NOW, expires, None),)


def test_changes_apply_in_order_grant_then_withdrawal() -> None:
    changes = [
        ConsentChange("v1", IR, NOW - HOUR, expires_at=NOW + HOUR),
        ConsentChange("v1", IR, NOW, withdrawn=True),
    ]
    (after,) = apply_consent_changes([], changes)
    assert after.withdrawn_at == NOW
    assert not after.in_force(NOW)


# --- release_to -------------------------------------------------------------------------------


def test_release_to_gives_a_partner_its_own_profile_as_the_rules_would() -> None:
    referral = facts(victim(consent(LE)))
    decision = route_referral(referral, POLICY, NOW)
    for chosen in decision.partners:
        assert (
            release_to(
                referral,
                POLICY,
                chosen.partner,
                NOW,
                priority=chosen.priority,
                rule_ids=chosen.rule_ids,
            )
            == chosen
        )


def test_release_to_the_desk_outside_the_rules_releases_identity_on_its_profile() -> None:
    release = release_to(
        facts(victim()), POLICY, "ccht", NOW, priority=Priority.HIGH, rule_ids=(REROUTE_RULE_ID,)
    )
    assert release.rule_ids == (REROUTE_RULE_ID,)
    assert release.victim_identities == (VictimRelease("v1", ReleaseBasis.PARTNER_PROFILE),)
    assert Sensitivity.VICTIM_IDENTITY in release.released_classes
    assert Sensitivity.LAW_ENFORCEMENT_SENSITIVE in release.released_classes


# --- plans ------------------------------------------------------------------------------------


def test_a_submission_is_new_to_every_chosen_partner() -> None:
    decision = route_referral(facts(victim(consent(LE))), POLICY, NOW)
    plan = plan_submission(decision)
    assert [(n.partner, n.kind) for n in plan.notices] == [
        ("hsi", NoticeKind.NEW),
        ("hsi-vap", NoticeKind.NEW),
    ]
    assert plan.holdings[0].identities == (VictimRelease("v1", ReleaseBasis.CONSENT),)


def _release(partner: str) -> PartnerRelease:
    return PartnerRelease(
        partner, Priority.HIGH, ("R1",), frozenset({Sensitivity.OPERATIONAL}), (), ()
    )


def test_an_amendment_tells_holders_new_recipients_and_partners_no_longer_chosen() -> None:
    held = [
        holding("hsi"),
        holding("uscg"),
        holding("ngo-west", declined=True),
        holding("ccht", substitute=True),
    ]
    decision = route_referral(facts(victim()), POLICY, NOW)  # hsi, hsi-vap
    ccht_now = _release("ccht")
    plan = plan_amendment(held, decision, {"ccht": ccht_now})
    assert [(n.partner, n.kind) for n in plan.notices] == [
        ("ccht", NoticeKind.AMENDMENT),  # took over a declined referral: keeps it
        ("hsi", NoticeKind.AMENDMENT),
        ("hsi-vap", NoticeKind.NEW),
        ("uscg", NoticeKind.WITHDRAWAL),  # no longer chosen
    ]
    assert next(n for n in plan.notices if n.partner == "ccht").release == ccht_now
    # The decliner is sent nothing and stays on record; the withdrawn-from partner is dropped.
    assert [(h.partner, h.declined, h.substitute) for h in plan.holdings] == [
        ("ccht", False, True),
        ("hsi", False, False),
        ("hsi-vap", False, False),
        ("ngo-west", True, False),
    ]


def test_a_withdrawal_reaches_every_partner_that_received_it_declined_or_not() -> None:
    held = [holding("hsi"), holding("ngo-west", declined=True)]
    plan = plan_withdrawal(held)
    assert [(n.partner, n.kind, n.release) for n in plan.notices] == [
        ("hsi", NoticeKind.WITHDRAWAL, None),
        ("ngo-west", NoticeKind.WITHDRAWAL, None),
    ]


def test_a_grant_delivers_only_to_partners_that_hold_nothing_yet() -> None:
    with_consent = facts(victim(consent(IR)))
    decision = route_referral(with_consent, POLICY, NOW)  # hsi, hsi-vap, uscis
    plan = plan_new_recipients([holding("hsi"), holding("hsi-vap")], decision)
    (notice,) = plan.notices
    assert (notice.partner, notice.kind) == ("uscis", NoticeKind.NEW)
    assert notice.release is not None
    assert notice.release.victim_identities == (VictimRelease("v1", ReleaseBasis.CONSENT),)
    assert [h.partner for h in plan.holdings] == ["hsi", "hsi-vap", "uscis"]


def test_a_grant_does_not_resend_to_a_partner_that_declined() -> None:
    decision = route_referral(facts(victim()), POLICY, NOW)
    plan = plan_new_recipients([holding("hsi", declined=True), holding("hsi-vap")], decision)
    assert plan.notices == ()


def _after(referral: ReferralFacts, partners: list[str]) -> dict[str, PartnerRelease]:
    return {
        p: release_to(referral, POLICY, p, NOW, priority=Priority.HIGH, rule_ids=())
        for p in partners
    }


def test_a_withdrawn_consent_is_recalled_from_partners_that_received_it_on_that_consent() -> None:
    held = [
        holding("hsi", ("v1", ReleaseBasis.CONSENT)),
        holding("cbp", ("v1", ReleaseBasis.CONSENT)),
        holding("hsi-vap", ("v1", ReleaseBasis.PARTNER_PROFILE)),
        holding("uscis", ("v1", ReleaseBasis.CONSENT)),  # on immigration-relief consent
        holding("ccht", ("v1", ReleaseBasis.PARTNER_PROFILE)),
    ]
    withdrawn = ConsentFact(LE, NOW - HOUR, NOW + HOUR, NOW)
    after = facts(victim(withdrawn, consent(IR)))
    plan = plan_recalls(held, "v1", LE, POLICY, _after(after, [h.partner for h in held]))
    assert [(n.partner, n.kind, n.recalled_victim_ref, n.release) for n in plan.notices] == [
        ("hsi", NoticeKind.RECALL, "v1", None),
        ("cbp", NoticeKind.RECALL, "v1", None),
    ]
    identities = {h.partner: h.identities for h in plan.holdings}
    assert identities["hsi"] == ()
    assert identities["cbp"] == ()
    assert identities["hsi-vap"] == (VictimRelease("v1", ReleaseBasis.PARTNER_PROFILE),)
    assert identities["uscis"] == (VictimRelease("v1", ReleaseBasis.CONSENT),)


def test_a_partner_holding_the_identity_by_override_keeps_it() -> None:
    held = [holding("hsi", ("v1", ReleaseBasis.IMMINENT_DANGER_OVERRIDE))]
    withdrawn = ConsentFact(LE, NOW - HOUR, NOW + HOUR, NOW)
    after = facts(victim(withdrawn), danger=True)
    plan = plan_recalls(held, "v1", LE, POLICY, _after(after, ["hsi"]))
    assert plan.notices == ()
    assert plan.holdings == tuple(held)


def test_a_consent_holder_that_may_still_hold_it_on_another_ground_is_not_recalled() -> None:
    # A minor who had consented: the minor override still releases the identity to HSI.
    held = [holding("hsi", ("v1", ReleaseBasis.CONSENT))]
    withdrawn = ConsentFact(LE, NOW - HOUR, NOW + HOUR, NOW)
    after = facts(victim(withdrawn, age=15))
    plan = plan_recalls(held, "v1", LE, POLICY, _after(after, ["hsi"]))
    assert plan.notices == ()
    assert plan.holdings[0].identities == (VictimRelease("v1", ReleaseBasis.MINOR_OVERRIDE),)


def test_a_partner_the_policy_no_longer_knows_is_recalled_when_in_doubt() -> None:
    held = [holding("retired-partner", ("v1", ReleaseBasis.CONSENT))]
    plan = plan_recalls(held, "v1", LE, POLICY, {})
    assert [n.partner for n in plan.notices] == ["retired-partner"]


@pytest.mark.parametrize("reason", ["OUT_OF_JURISDICTION", "NO_CAPACITY"])
def test_a_declined_referral_goes_to_the_desk(reason: str) -> None:
    held = [holding("hsi"), holding("ngo-west")]
    outcome = plan_reroute(held, "ngo-west", reason)
    assert outcome.target == "ccht"
    assert outcome.priority is Priority.HIGH
    assert "ngo-west declined" in outcome.explanation
    assert [(h.partner, h.declined) for h in outcome.plan.holdings] == [
        ("hsi", False),
        ("ngo-west", True),
    ]


def test_no_reroute_when_the_desk_already_has_it() -> None:
    outcome = plan_reroute([holding("hsi"), holding("ccht")], "hsi", "NO_CAPACITY")
    assert outcome.target is None
    assert "already has it" in outcome.explanation
    assert [(h.partner, h.declined) for h in outcome.plan.holdings] == [
        ("hsi", True),
        ("ccht", False),
    ]


def test_the_desk_declining_goes_nowhere_else() -> None:
    outcome = plan_reroute([holding("ccht")], "ccht", "OUT_OF_JURISDICTION")
    assert outcome.target is None


def test_other_decline_reasons_are_recorded_not_rerouted() -> None:
    outcome = plan_reroute([holding("hsi")], "hsi", "DUPLICATE")
    assert outcome.target is None
    assert outcome.plan.holdings[0].declined


def test_a_decline_by_a_partner_that_never_received_it_changes_nothing() -> None:
    held = (holding("hsi"),)
    outcome = plan_reroute(held, "cbp", "NO_CAPACITY")
    assert outcome.target is None
    assert outcome.plan.holdings == held


def test_state_finds_a_holding_by_partner() -> None:
    state = ReferralState(b"", (holding("hsi"),))
    assert state.holding("hsi") == holding("hsi")
    assert state.holding("cbp") is None
