"""Loading the routing policy: the default loads, and broken files fail with file, line, reason.

Each broken policy is the shipped default with one deliberate mistake, so the tests also prove
that the loader points at the mistake and not somewhere near it. Line numbers are computed from
the edited text rather than hard-coded, so comments in the default can change freely.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from referral.domain import policy as policy_module
from referral.domain.facts import ConsentScope, Priority, Sensitivity
from referral.domain.policy import (
    CONDITIONS,
    SPECIAL_TARGETS,
    US_STATE_CODES,
    PolicyError,
    default_policy_path,
    load_default_policy,
    load_policy,
    parse_policy,
)

DEFAULT_TEXT = default_policy_path().read_text(encoding="utf-8")


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """The 1-based line of the n-th occurrence of ``needle`` in ``text``."""
    start = -1
    for _ in range(occurrence):
        start = text.index(needle, start + 1)
    return text.count("\n", 0, start) + 1


def edit(old: str, new: str, text: str = DEFAULT_TEXT) -> str:
    assert text.count(old) == 1, f"the default policy should contain {old!r} exactly once"
    return text.replace(old, new)


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> PolicyError:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.filename == str(path)
    assert str(info.value).startswith(f"{path}:")
    return info.value


# --- the default policy ------------------------------------------------------------------------


def test_default_policy_loads_with_rules_r0_to_r10_in_table_order() -> None:
    policy = load_default_policy()
    assert [r.id for r in policy.rules] == [f"R{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0)]
    assert {r.id: r.priority for r in policy.rules} == {
        "R0": Priority.ROUTINE,
        "R1": Priority.HIGH,
        "R2": Priority.URGENT,
        "R3": Priority.URGENT,
        "R4": Priority.HIGH,
        "R5": Priority.HIGH,
        "R6": Priority.HIGH,
        "R7": Priority.HIGH,
        "R8": Priority.HIGH,
        "R9": Priority.ROUTINE,
        "R10": Priority.ROUTINE,
    }
    assert policy.rule("R2").route_to == ("hsi", "hsi-vap", "ccht")
    assert policy.rule("R3").applies_to_all_chosen
    assert policy.rule("R0").is_catch_all


def test_default_policy_version_is_the_file_hash() -> None:
    policy = load_default_policy()
    expected = hashlib.sha256(default_policy_path().read_bytes()).hexdigest()[:12]
    assert policy.version == expected
    assert len(policy.version) == 12
    assert policy.source == str(default_policy_path())


def test_default_ngo_regions_cover_every_state_and_territory_once() -> None:
    policy = load_default_policy()
    regions = policy.ngo_regions
    assert set(regions) == {
        "ngo-northeast",
        "ngo-mid-atlantic",
        "ngo-southeast",
        "ngo-central",
        "ngo-southwest",
        "ngo-west",
        "ngo-territories",
    }
    all_states = [s for states in regions.values() for s in states]
    assert len(all_states) == len(set(all_states)) == 56
    assert set(all_states) == US_STATE_CODES - {"UM"}
    assert regions["ngo-territories"] == {"PR", "VI", "GU", "AS", "MP"}
    assert policy.ngo_by_state["GA"] == "ngo-southeast"
    assert policy.ngo_by_state["DC"] == "ngo-mid-atlantic"


def test_default_release_profiles_follow_the_release_table() -> None:
    policy = load_default_policy()
    six = frozenset(Sensitivity) - {Sensitivity.VICTIM_IDENTITY}
    enforcement = frozenset(
        {
            Sensitivity.OPERATIONAL,
            Sensitivity.TRADE,
            Sensitivity.LAW_ENFORCEMENT_SENSITIVE,
            Sensitivity.VICTIM_NEEDS,
        }
    )
    assert policy.profile_for("hsi").classes == six
    assert policy.profile_for("ccht").classes == six
    assert policy.profile_for("cbp").classes == enforcement
    assert policy.profile_for("uscg").classes == enforcement
    assert policy.profile_for("hsi-vap").classes == {
        Sensitivity.OPERATIONAL,
        Sensitivity.VICTIM_NEEDS,
        Sensitivity.IMMIGRATION,
    }
    assert policy.profile_for("uscis").classes == {
        Sensitivity.OPERATIONAL,
        Sensitivity.VICTIM_NEEDS,
        Sensitivity.IMMIGRATION,
    }
    for ngo in policy.ngo_regions:
        assert policy.profile_for(ngo).classes == {
            Sensitivity.OPERATIONAL,
            Sensitivity.VICTIM_NEEDS,
        }
        assert policy.profile_for(ngo).victim_identity.consent_scope is (
            ConsentScope.VICTIM_SERVICES_REFERRAL
        )
    # Reporter identity goes to HSI and the CCHT desk only.
    assert {
        p
        for p, prof in policy.release_profiles.items()
        if Sensitivity.REPORTER_IDENTITY in prof.classes
    } == {"hsi", "ccht"}
    # Identity modes of the table.
    modes = {p: prof.victim_identity.mode for p, prof in policy.release_profiles.items()}
    assert modes["hsi"] == modes["cbp"] == modes["uscg"] == "if_released"
    assert modes["hsi-vap"] == modes["ccht"] == "always"
    hsi = policy.profile_for("hsi").victim_identity
    assert hsi.consent_scope is ConsentScope.LAW_ENFORCEMENT_CONTACT
    assert hsi.minor_override
    assert hsi.imminent_danger_override
    uscis = policy.profile_for("uscis").victim_identity
    assert uscis.consent_scope is ConsentScope.IMMIGRATION_RELIEF
    assert not uscis.minor_override
    assert not uscis.imminent_danger_override


def test_the_documented_example_policy_loads() -> None:
    doc = policy_module.__doc__ or ""
    example = doc.split("::\n\n", 1)[1].split("\nA condition", 1)[0]
    policy = parse_policy(textwrap.dedent(example), "example.yaml")
    assert [r.id for r in policy.rules] == ["R1", "R8", "R0"]
    assert policy.profile_for("ngo-west").victim_identity.victims_in_region_only


def test_vocabulary_is_documented() -> None:
    assert "victim_is_minor" in CONDITIONS
    assert "no_other_rule" in CONDITIONS
    assert set(SPECIAL_TARGETS) == {"all_chosen", "ngo_region_of_consenting_victims"}


# --- versions ----------------------------------------------------------------------------------


def test_version_changes_when_the_content_changes(tmp_path: Path) -> None:
    original = load_policy(write(tmp_path, DEFAULT_TEXT, "a.yaml"))
    same = load_policy(write(tmp_path, DEFAULT_TEXT, "b.yaml"))
    commented = load_policy(write(tmp_path, DEFAULT_TEXT + "# reviewed\n", "c.yaml"))
    changed = load_policy(
        write(
            tmp_path,
            edit(
                "    route_to: [uscis]\n    priority: ROUTINE",
                "    route_to: [uscis]\n    priority: HIGH",
            ),
            "d.yaml",
        )
    )
    assert original.version == same.version
    assert len({original.version, commented.version, changed.version}) == 3
    assert changed.rule("R9").priority is Priority.HIGH


def test_parse_policy_accepts_text_and_bytes_alike() -> None:
    assert parse_policy(DEFAULT_TEXT).version == parse_policy(DEFAULT_TEXT.encode()).version


# --- broken policies ---------------------------------------------------------------------------


def test_yaml_syntax_error(tmp_path: Path) -> None:
    text = edit("  - id: R7\n", "  - id: R7\n\tdescription: tab-indented\n")
    err = load_error(tmp_path, text)
    assert err.line == line_of(text, "\tdescription")
    assert err.reason == "YAML syntax error: found character '\\t' that cannot start any token"


def test_yaml_syntax_error_is_reported_where_the_parser_notices_it(tmp_path: Path) -> None:
    text = edit("    when: [smuggling_only]\n", "    when: [smuggling_only\n")
    err = load_error(tmp_path, text)
    # The unclosed list swallows the next line; the parser stops at its colon.
    assert err.line == line_of(text, "[smuggling_only") + 1
    assert err.reason == "YAML syntax error: expected ',' or ']', but got ':'"


def test_unknown_condition(tmp_path: Path) -> None:
    text = edit(
        "      - adult_victim_consented: VICTIM_SERVICES_REFERRAL\n",
        "      - victim_consented_to: VICTIM_SERVICES_REFERRAL\n",
    )
    err = load_error(tmp_path, text)
    assert err.line == line_of(text, "victim_consented_to")
    assert err.reason.startswith(
        'rule "R8": unknown condition "victim_consented_to"; expected one of:'
    )
    assert "adult_victim_consented" in err.reason


def test_unknown_partner_in_route_to(tmp_path: Path) -> None:
    text = edit("    route_to: [cbp]\n", "    route_to: [cbp-trade]\n")
    err = load_error(tmp_path, text)
    assert err.line == line_of(text, "[cbp-trade]")
    assert 'rule "R4": unknown partner "cbp-trade" in route_to' in err.reason


def test_partner_routed_to_without_release_profile(tmp_path: Path) -> None:
    text = edit(
        "  ccht: Center for",
        "  dol: Department of Labor, Wage and Hour Division\n  ccht: Center for",
    )
    text = edit("    route_to: [uscg, hsi]\n", "    route_to: [uscg, hsi, dol]\n", text)
    err = load_error(tmp_path, text)
    assert err.line == line_of(text, "[uscg, hsi, dol]")
    assert 'rule "R5": partner "dol" has no release profile' in err.reason


def test_declared_partner_without_release_profile(tmp_path: Path) -> None:
    text = edit("  ccht: Center for", "  dol: Department of Labor\n  ccht: Center for")
    err = load_error(tmp_path, text)
    assert err.line == line_of(text, "  dol: Department of Labor")
    assert 'partner "dol" has no release profile' in err.reason


def test_bad_priority(tmp_path: Path) -> None:
    text = edit(
        "    route_to: [uscg, hsi]\n    priority: HIGH\n",
        "    route_to: [uscg, hsi]\n    priority: ASAP\n",
    )
    err = load_error(tmp_path, text)
    assert err.line == line_of(text, "priority: ASAP")
    assert err.reason == (
        'rule "R5": priority: unknown value "ASAP"; expected one of: ROUTINE, HIGH, URGENT'
    )


def test_duplicate_rule_id(tmp_path: Path) -> None:
    text = edit("  - id: R10\n", "  - id: R1\n")
    err = load_error(tmp_path, text)
    assert err.line == line_of(text, "  - id: R1\n", occurrence=2)
    assert err.reason == (
        f'duplicate rule id "R1" (first defined at line {line_of(text, "  - id: R1")})'
    )


@pytest.mark.parametrize(
    ("old", "new", "at", "reason"),
    [
        pytest.param(
            "schema_version: 1\n",
            "schema_version: 1\nrouting_mode: strict\n",
            "routing_mode",
            'the policy: unknown key "routing_mode"',
            id="unknown-top-level-key",
        ),
        pytest.param(
            "schema_version: 1\n",
            "schema_version: 2\n",
            "schema_version",
            "schema_version must be 1",
            id="schema-version",
        ),
        pytest.param(
            "  uscg: U.S. Coast Guard",
            "  hsi: again\n  uscg: U.S. Coast Guard",
            "  hsi: again",
            'duplicate key "hsi"',
            id="duplicate-yaml-key",
        ),
        pytest.param(
            "  ngo-west: [CA, NV,",
            "  ngo-west: [CN, NV,",
            "[CN, NV",
            '"CN" is not a US state or territory code',
            id="bad-state-code",
        ),
        pytest.param(
            "  ngo-west: [CA, NV,",
            "  ngo-west: [GA, CA, NV,",
            "[GA, CA",
            'state "GA" is already in "ngo-southeast"',
            id="state-in-two-regions",
        ),
        pytest.param(
            "    victim_identity: always\n  # Victim-advocacy",
            "    victim_identity: sometimes\n  # Victim-advocacy",
            "sometimes",
            'release profile "hsi-vap": victim_identity: unknown value "sometimes"',
            id="bad-identity-mode",
        ),
        pytest.param(
            "    classes: [OPERATIONAL, VICTIM_NEEDS]\n",
            "    classes: [OPERATIONAL, VICTIM_NEEDS, VICTIM_IDENTITY]\n",
            "VICTIM_IDENTITY]",
            "VICTIM_IDENTITY is released per victim; set victim_identity instead",
            id="identity-as-class",
        ),
        pytest.param(
            "    classes: [OPERATIONAL, VICTIM_NEEDS]\n",
            "    classes: [OPERATIONAL, VICTIM_NEED]\n",
            "VICTIM_NEED]",
            'unknown value "VICTIM_NEED"',
            id="unknown-class",
        ),
        pytest.param(
            "      with_consent: IMMIGRATION_RELIEF\n",
            "      with_consent: ASYLUM\n",
            "ASYLUM",
            'release profile "uscis": victim_identity: with_consent: unknown value "ASYLUM"',
            id="unknown-consent-scope",
        ),
        pytest.param(
            '  "ngo-*":\n',
            '  "ngo-w*":\n    classes: [OPERATIONAL]\n    victim_identity: never\n  "ngo-*":\n',
            '  "ngo-*"',
            'release profiles "ngo-w*"',
            id="two-patterns-match-one-partner",
        ),
        pytest.param(
            "  uscis:\n    classes",
            "  uscis-x:\n    classes: [OPERATIONAL]\n    victim_identity: never\n"
            "  uscis:\n    classes",
            "uscis-x:",
            'release profile "uscis-x": unknown partner',
            id="profile-for-unknown-partner",
        ),
        pytest.param(
            "    when: [no_other_rule]\n",
            "    when: [no_other_rule, imminent_danger]\n",
            "rules:\n",
            "no catch-all rule",
            id="no-catch-all",
        ),
        pytest.param(
            "      - air_travel\n",
            "      - no_other_rule\n",
            "- no_other_rule",
            "no_other_rule cannot be an alternative of any_of",
            id="catch-all-inside-any",
        ),
        pytest.param(
            "    when: [imminent_danger]\n",
            "    when: [imminent_danger: yes]\n",
            "imminent_danger: yes",
            'condition "imminent_danger" takes no argument',
            id="argument-not-expected",
        ),
        pytest.param(
            "      - adult_victim_consented: VICTIM_SERVICES_REFERRAL\n",
            "      - adult_victim_consented\n",
            "- adult_victim_consented",
            'condition "adult_victim_consented" needs a consent scope',
            id="argument-missing",
        ),
        pytest.param(
            "      - source_is: bli-airline\n",
            "      - source_is: BLI Airline\n",
            "BLI Airline",
            '"BLI Airline" is not a valid source id',
            id="bad-source-id",
        ),
        pytest.param(
            "    description: Smuggling indicators only, no trafficking indicator, go to HSI.\n",
            "",
            "  - id: R10",
            'rule "R10": missing key "description"',
            id="rule-missing-description",
        ),
        pytest.param(
            "    route_to: [hsi]\n    priority: ROUTINE\n",
            "    route_to: [hsi]\n    priority: ROUTINE\n    owner: ops\n",
            "owner: ops",
            'rule #10: unknown key "owner"',
            id="rule-unknown-key",
        ),
        pytest.param(
            "    route_to: [ccht]\n    priority: ROUTINE\n",
            "    route_to: [ccht, all_chosen]\n    priority: ROUTINE\n",
            "[ccht, all_chosen]",
            "all_chosen cannot be combined with no_other_rule",
            id="all-chosen-in-catch-all",
        ),
    ],
)
def test_broken_policy(tmp_path: Path, old: str, new: str, at: str, reason: str) -> None:
    text = edit(old, new)
    err = load_error(tmp_path, text)
    assert err.line == line_of(text, at), err
    assert reason in err.reason, err


def test_empty_policy(tmp_path: Path) -> None:
    err = load_error(tmp_path, "# nothing here\n")
    assert err.reason == "the policy file is empty"


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    assert str(info.value).startswith(f"{missing}: cannot read the policy")
    assert info.value.line is None
