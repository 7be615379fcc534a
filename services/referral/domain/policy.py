"""The routing and release policy as data: loaded from a YAML file, validated, versioned.

Why data and not code: who receives a referral and which fields and victims' identities each
partner may see is a decision of the operators and their counsel, not of the developers. The
file says it in the words of the domain (partners, rules R0-R10, the release table, NGO regions);
adding a partner, a rule or a release profile is an edit of the file, reviewed like any other.

Why so strict: a policy mistake silently sends a victim's identity to the wrong agency or drops
a referral. So the loader rejects anything it does not understand (unknown keys, conditions,
partners, classes), requires a release profile for every partner and a catch-all rule, and
names the file, the line and the reason, like a compiler would. It reads PyYAML's composed
node tree rather than plain Python objects because only the nodes know their line numbers.

The version of a policy is the first 12 hex digits of the SHA-256 of the file's bytes exactly as
stored, so any change (even a comment) gives a new version, and an auditor can recompute the
version of a decision's policy with ``sha256sum policy.yaml | cut -c1-12``.

The file format (``schema_version: 1``)::

    schema_version: 1
    partners:                      # every recipient, id -> who it is
      hsi: ICE Homeland Security Investigations
      ccht: Center for Countering Human Trafficking duty desk
      ngo-west: Victim-advocacy NGO, West region
    ngo_regions:                   # NGO partner -> the US states and territories it serves
      ngo-west: [CA, NV, OR, WA]
    release_profiles:              # partner id or glob pattern -> what it may receive
      hsi:
        classes: [OPERATIONAL, LAW_ENFORCEMENT_SENSITIVE, VICTIM_NEEDS]
        victim_identity: if_released          # always | never | if_released | {with_consent..}
      ccht:
        classes: [OPERATIONAL, LAW_ENFORCEMENT_SENSITIVE, VICTIM_NEEDS]
        victim_identity: always
      "ngo-*":                     # exact ids win over patterns; two patterns may not overlap
        classes: [OPERATIONAL, VICTIM_NEEDS]
        victim_identity:
          with_consent: VICTIM_SERVICES_REFERRAL
          victims_in_region_only: true        # optional: only victims of the NGO's region
          # overrides: [minor, imminent_danger]   optional
    rules:
      - id: R1
        description: Any trafficking indicator goes to HSI.
        when: [any_trafficking_indicator]     # all must hold; see CONDITIONS
        # when_any: [...]                       optional: at least one must hold
        route_to: [hsi]                       # partner ids, all_chosen, ngo_region_of_...
        priority: HIGH                        # ROUTINE, HIGH, URGENT
      - id: R8
        description: Consenting adults go to the NGO of their state.
        when:
          - adult_victim_consented: VICTIM_SERVICES_REFERRAL
        route_to: [ngo_region_of_consenting_victims]
        priority: HIGH
      - id: R0                                # a catch-all rule is required
        description: No other rule matched; the CCHT desk triages.
        when: [no_other_rule]
        route_to: [ccht]
        priority: ROUTINE

A condition is a name (``imminent_danger``) or a one-key mapping with its argument
(``adult_victim_consented: VICTIM_SERVICES_REFERRAL``, ``source_is: [bli-airline]``,
``any_of: [...]``); CONDITIONS lists the vocabulary.

Routing itself (turning these rules into a decision) lives in :mod:`referral.domain.routing`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeAlias, TypeVar

import yaml

from referral.domain.facts import ConsentScope, Indicator, LocationKind, Priority, Sensitivity

SCHEMA_VERSION: Final = 1

# The US states, DC and the inhabited territories (plus the Minor Outlying Islands), by their
# two-letter codes: NGO regions and state conditions may only name these, which catches typos.
# fmt: off
US_STATE_CODES: Final[frozenset[str]] = frozenset({
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN",
    "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH",
    "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT",
    "VT", "VA", "WA", "WV", "WI", "WY", "PR", "VI", "GU", "AS", "MP", "UM",
})
# fmt: on

# Partner and source ids follow the contract's pattern for source ids. Underscores are not
# allowed, so the special route targets below can never clash with a partner id.
_ID_RE: Final = re.compile(r"^[a-z][a-z0-9-]{1,62}$")
_RULE_ID_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")

# Special route targets, resolved per referral by the router.
ALL_CHOSEN: Final = "all_chosen"
NGO_REGION_OF_CONSENTING_VICTIMS: Final = "ngo_region_of_consenting_victims"
SPECIAL_TARGETS: Final[Mapping[str, str]] = MappingProxyType(
    {
        ALL_CHOSEN: "every recipient chosen by the other rules (used by R3 to raise them all)",
        NGO_REGION_OF_CONSENTING_VICTIMS: (
            "the NGO of the region of the state of each adult victim whose victim-services "
            "referral consent is in force; none for a victim without a state in a region"
        ),
    }
)

NO_OTHER_RULE: Final = "no_other_rule"
ANY_OF: Final = "any_of"


class _Arg(Enum):
    """What a condition takes as its argument."""

    NONE = "no argument"
    INDICATORS = "a list of indicators"
    LOCATION_KINDS = "a list of location kinds"
    STATES = "a list of US state codes"
    SOURCES = "a source id or a list of source ids"
    SCOPE = "a consent scope"
    CONDITIONS = "a list of conditions"


# The condition vocabulary: name -> (argument, what it means). Small on purpose: each name is a
# phrase of the domain note, so a rule reads like the note's table. Evaluation is in routing.py.
_VOCABULARY: Final[dict[str, tuple[_Arg, str]]] = {
    "any_trafficking_indicator": (
        _Arg.NONE,
        "an indicator of trafficking in persons: sex or labor trafficking, child sexual "
        "exploitation, document servitude, debt bondage, forced labor in the US",
    ),
    "has_indicator": (_Arg.INDICATORS, "any of the listed indicators"),
    "indicators_only": (_Arg.INDICATORS, "at least one indicator, and all are listed"),
    "smuggling_only": (_Arg.NONE, "smuggling is the only indicator"),
    "victim_is_minor": (_Arg.NONE, "a potential victim is under 18 (age or date of birth)"),
    "any_victim": (_Arg.NONE, "at least one potential victim is identified"),
    "adult_victim_consented": (
        _Arg.SCOPE,
        "an adult (not known to be a minor) victim has consent of this scope in force",
    ),
    "non_us_victim_consented": (
        _Arg.SCOPE,
        "a victim with a recorded non-US nationality has consent of this scope in force",
    ),
    "imminent_danger": (_Arg.NONE, "imminent danger is flagged"),
    "forced_labor_in_goods_destined_for_us": (
        _Arg.NONE,
        "forced labor in goods produced abroad and destined for the US",
    ),
    "at_sea_or_vessel": (_Arg.NONE, "a location is at sea, or a vessel is involved"),
    "air_travel": (_Arg.NONE, "a location is a flight or an airport"),
    "location_kind": (_Arg.LOCATION_KINDS, "a location is of any of the listed kinds"),
    "location_state_in": (_Arg.STATES, "a location is in any of the listed states"),
    "source_is": (_Arg.SOURCES, "the referral comes from (one of) the named source(s)"),
    ANY_OF: (_Arg.CONDITIONS, "at least one of the listed conditions holds"),
    NO_OTHER_RULE: (
        _Arg.NONE,
        "no other rule chose a recipient (the catch-all: nothing is silently dropped)",
    ),
}

CONDITIONS: Final[Mapping[str, str]] = MappingProxyType(
    {name: f"{meaning} (argument: {arg.value})" for name, (arg, meaning) in _VOCABULARY.items()}
)

# How a profile may release victims' identities; ``if_released`` is the note's "if released*":
# consent to law-enforcement contact, or the minor or imminent-danger override.
_IDENTITY_MODES: Final = ("always", "never", "if_released", "with_consent")
_OVERRIDES: Final = ("minor", "imminent_danger")


class PolicyError(ValueError):
    """A policy file that cannot be used, with where and why: ``file:line: reason``."""

    def __init__(self, filename: str, line: int | None, reason: str) -> None:
        self.filename = filename
        self.line = line
        self.reason = reason
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class Partner:
    """A recipient of referrals."""

    id: str
    description: str
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class IdentityRelease:
    """When a partner may receive a victim's identity; checked per victim.

    ``always`` releases on the partner's role (basis PARTNER_PROFILE); otherwise the victim's own
    consent of ``consent_scope`` in force (basis CONSENT), or, where enabled, the victim being a
    minor (MINOR_OVERRIDE) or the referral flagging imminent danger (IMMINENT_DANGER_OVERRIDE).
    ``victims_in_region_only`` further limits an NGO partner to the victims whose state is in its
    region: a victim consents to be referred to victim services where they are, and an NGO
    elsewhere has no need to know who they are.
    """

    mode: str
    always: bool = False
    consent_scope: ConsentScope | None = None
    minor_override: bool = False
    imminent_danger_override: bool = False
    victims_in_region_only: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseProfile:
    """What one partner (or every partner matching a pattern) may receive.

    ``classes`` never contains VICTIM_IDENTITY: whether identity goes out is decided per victim
    by ``victim_identity``, and the class is added to a copy only when some identity is released.
    """

    match: str
    classes: frozenset[Sensitivity]
    victim_identity: IdentityRelease
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition of a rule: a name of the vocabulary and its argument, if any.

    ``values`` holds a list argument (indicators, location kinds, states, sources; the enums are
    strings so one type does), ``scope`` a consent scope, ``alternatives`` the conditions of
    ``any_of``.
    """

    name: str
    values: frozenset[str] = frozenset()
    scope: ConsentScope | None = None
    alternatives: tuple[Condition, ...] = ()
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Rule:
    """A routing rule: when all ``conditions`` hold, route to ``route_to`` at ``priority``.

    A rule's ``when_any`` list is kept as one ``any_of`` condition among ``conditions``.
    ``route_to`` holds partner ids and special targets (see SPECIAL_TARGETS).
    """

    id: str
    description: str
    conditions: tuple[Condition, ...]
    route_to: tuple[str, ...]
    priority: Priority
    line: int = field(default=0, compare=False)

    @property
    def is_catch_all(self) -> bool:
        """Whether the rule only applies when no other rule chose a recipient."""
        return any(c.name == NO_OTHER_RULE for c in self.conditions)

    @property
    def applies_to_all_chosen(self) -> bool:
        """Whether the rule routes to every recipient the other rules chose (like R3)."""
        return ALL_CHOSEN in self.route_to


# eq=False: a policy is compared by identity, which also makes it a cheap key for the router's
# cache of compiled policies; weakref_slot lets that cache forget policies nobody uses.
@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Policy:
    """A loaded, validated policy.

    ``release_profiles`` is resolved: it maps every partner id to the profile that applies to it
    (patterns already expanded), so nothing is matched per referral. ``ngo_by_state`` is the
    inverse of ``ngo_regions``.
    """

    version: str
    source: str
    partners: Mapping[str, Partner]
    release_profiles: Mapping[str, ReleaseProfile]
    rules: tuple[Rule, ...]
    ngo_regions: Mapping[str, frozenset[str]]
    ngo_by_state: Mapping[str, str]

    def profile_for(self, partner: str) -> ReleaseProfile:
        """The release profile of a partner (every declared partner has one)."""
        return self.release_profiles[partner]

    def rule(self, rule_id: str) -> Rule:
        """The rule with this id."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


def default_policy_path() -> Path:
    """Where the shipped default policy lives (``referral/policy/default_policy.yaml``)."""
    return Path(__file__).resolve().parent.parent / "policy" / "default_policy.yaml"


def load_default_policy() -> Policy:
    """The shipped default policy."""
    return load_policy(default_policy_path())


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read, validate and version a policy file; raise PolicyError naming file, line and reason."""
    filename = os.fspath(path)
    try:
        data = Path(filename).read_bytes()
    except OSError as exc:
        raise PolicyError(filename, None, f"cannot read the policy: {exc.strerror}") from exc
    return parse_policy(data, filename)


def parse_policy(data: bytes | str, filename: str = "<policy>") -> Policy:
    """Validate and version a policy given as bytes or text; ``filename`` is used in errors."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    version = hashlib.sha256(raw).hexdigest()[:12]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(filename, None, f"the policy is not UTF-8 text: {exc.reason}") from exc
    root = _compose(text, filename)
    return _Loader(filename).load(root, version)


# --- a typed copy of PyYAML's node tree, with line numbers ---------------------------------------

_STR_TAG: Final = "tag:yaml.org,2002:str"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"


@dataclass(frozen=True, slots=True)
class _Scalar:
    value: str
    tag: str
    line: int


@dataclass(frozen=True, slots=True)
class _Seq:
    items: tuple[_Node, ...]
    line: int


@dataclass(frozen=True, slots=True)
class _Map:
    entries: tuple[tuple[_Scalar, _Node], ...]
    line: int


_Node: TypeAlias = "_Scalar | _Seq | _Map"


def _compose(text: str, filename: str) -> _Node:
    try:
        node: Any = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark: Any = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyError(filename, line, f"YAML syntax error: {problem}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(filename, None, f"YAML syntax error: {exc}") from exc
    if node is None:
        raise PolicyError(filename, 1, "the policy file is empty")
    return _convert(node, filename, frozenset())


def _convert(node: Any, filename: str, ancestors: frozenset[int]) -> _Node:
    line = int(node.start_mark.line) + 1
    # An alias may point at one of its own ancestors; following it would never end.
    if id(node) in ancestors:
        raise PolicyError(filename, line, "a YAML alias refers to itself")
    inner = ancestors | {id(node)}
    if isinstance(node, yaml.ScalarNode):
        return _Scalar(str(node.value), str(node.tag), line)
    if isinstance(node, yaml.SequenceNode):
        return _Seq(tuple(_convert(item, filename, inner) for item in node.value), line)
    entries: list[tuple[_Scalar, _Node]] = []
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = _convert(key_node, filename, inner)
        if not isinstance(key, _Scalar):
            raise PolicyError(filename, key.line, "a mapping key must be a plain string")
        if key.tag == _MERGE_TAG:
            raise PolicyError(
                filename, key.line, "merge keys (<<) are not supported; write the keys out"
            )
        # yaml.compose keeps duplicate keys; a duplicated key would silently override the first.
        if key.value in seen:
            raise PolicyError(
                filename, key.line, f'duplicate key "{key.value}" (first at line {seen[key.value]})'
            )
        seen[key.value] = key.line
        entries.append((key, _convert(value_node, filename, inner)))
    return _Map(tuple(entries), line)


# --- validation ---------------------------------------------------------------------------------

_E = TypeVar("_E", bound=Enum)


def _one_of(options: Iterable[str]) -> str:
    return ", ".join(options)


class _Loader:
    """Turns the node tree into a Policy, failing at the first problem with its line."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, line: int | None, reason: str) -> NoReturn:
        raise PolicyError(self.filename, line, reason)

    # generic shape checks ----------------------------------------------------------------------

    def mapping(self, node: _Node, what: str) -> _Map:
        if not isinstance(node, _Map):
            self.fail(node.line, f"{what} must be a mapping")
        return node

    def sequence(self, node: _Node, what: str) -> _Seq:
        if not isinstance(node, _Seq):
            self.fail(node.line, f"{what} must be a list")
        return node

    def string(self, node: _Node, what: str) -> str:
        if not isinstance(node, _Scalar) or node.tag != _STR_TAG:
            self.fail(node.line, f"{what} must be a string")
        return node.value

    def strings(self, node: _Node, what: str, *, allow_single: bool = False) -> list[_Scalar]:
        """A list of strings (or one string, where a single value reads naturally)."""
        if allow_single and isinstance(node, _Scalar):
            self.string(node, what)
            return [node]
        items = self.sequence(node, what).items
        if not items:
            self.fail(node.line, f"{what} must not be empty")
        for item in items:
            self.string(item, f"each item of {what}")
        return [item for item in items if isinstance(item, _Scalar)]

    def enum_value(self, node: _Node, enum: type[_E], what: str) -> _E:
        value = self.string(node, what)
        try:
            return enum[value]
        except KeyError:
            self.fail(
                node.line,
                f'{what}: unknown value "{value}"; expected one of: {_one_of(enum.__members__)}',
            )

    def keys(
        self, node: _Map, what: str, *, required: Iterable[str], optional: Iterable[str] = ()
    ) -> dict[str, _Node]:
        required = tuple(required)
        allowed = (*required, *optional)
        found: dict[str, _Node] = {}
        for key, value in node.entries:
            if key.value not in allowed:
                self.fail(
                    key.line,
                    f'{what}: unknown key "{key.value}"; expected one of: {_one_of(allowed)}',
                )
            found[key.value] = value
        for name in required:
            if name not in found:
                self.fail(node.line, f'{what}: missing key "{name}"')
        return found

    # the document ------------------------------------------------------------------------------

    def load(self, root: _Node, version: str) -> Policy:
        doc = self.mapping(root, "the policy")
        top = self.keys(
            doc,
            "the policy",
            required=("schema_version", "partners", "release_profiles", "rules"),
            optional=("ngo_regions",),
        )
        schema = top["schema_version"]
        if not (isinstance(schema, _Scalar) and schema.value == str(SCHEMA_VERSION)):
            self.fail(schema.line, f"schema_version must be {SCHEMA_VERSION}")

        partners = self.partners(top["partners"])
        regions_node = top.get("ngo_regions")
        ngo_regions, ngo_by_state, region_lines = (
            self.ngo_regions(regions_node, partners) if regions_node else ({}, {}, {})
        )
        profiles = self.release_profiles(top["release_profiles"], partners)
        for partner_id, profile in profiles.items():
            if profile.victim_identity.victims_in_region_only and partner_id not in ngo_regions:
                self.fail(
                    profile.line,
                    f'release profile "{profile.match}": victims_in_region_only applies to '
                    f'partner "{partner_id}", which has no NGO region under ngo_regions',
                )
        rules_line = next(key.line for key, _ in doc.entries if key.value == "rules")
        rules = self.rules(top["rules"], rules_line, partners, profiles, ngo_regions)

        # Every partner needs a profile, even one no rule names yet: a partner without one could
        # only ever be routed to by mistake. Rules already reported the partners they name.
        for partner in partners.values():
            if partner.id not in profiles:
                line = region_lines.get(partner.id, partner.line)
                self.fail(
                    line,
                    f'partner "{partner.id}" has no release profile; add one under '
                    "release_profiles (its id or a pattern such as ngo-*)",
                )

        return Policy(
            version=version,
            source=self.filename,
            partners=MappingProxyType(partners),
            release_profiles=MappingProxyType(profiles),
            rules=rules,
            ngo_regions=MappingProxyType(ngo_regions),
            ngo_by_state=MappingProxyType(ngo_by_state),
        )

    def partners(self, node: _Node) -> dict[str, Partner]:
        partners: dict[str, Partner] = {}
        entries = self.mapping(node, "partners").entries
        if not entries:
            self.fail(node.line, "partners must not be empty")
        for key, value in entries:
            if not _ID_RE.match(key.value):
                self.fail(
                    key.line,
                    f'partner "{key.value}": an id is lowercase letters, digits and dashes, '
                    "starting with a letter",
                )
            description = self.string(value, f'partner "{key.value}": the description')
            partners[key.value] = Partner(key.value, description, key.line)
        return partners

    def ngo_regions(
        self, node: _Node, partners: Mapping[str, Partner]
    ) -> tuple[dict[str, frozenset[str]], dict[str, str], dict[str, int]]:
        regions: dict[str, frozenset[str]] = {}
        by_state: dict[str, str] = {}
        lines: dict[str, int] = {}
        for key, value in self.mapping(node, "ngo_regions").entries:
            what = f'ngo_regions: "{key.value}"'
            if key.value not in partners:
                self.fail(key.line, f"{what} is not a declared partner; declare it under partners")
            states: set[str] = set()
            for item in self.strings(value, f"{what}: the states"):
                if item.value not in US_STATE_CODES:
                    self.fail(
                        item.line, f'{what}: "{item.value}" is not a US state or territory code'
                    )
                # A state in two regions would make the victim's NGO depend on file order.
                if item.value in by_state:
                    self.fail(
                        item.line,
                        f'{what}: state "{item.value}" is already in "{by_state[item.value]}"',
                    )
                by_state[item.value] = key.value
                states.add(item.value)
            regions[key.value] = frozenset(states)
            lines[key.value] = key.line
        return regions, by_state, lines

    def release_profiles(
        self, node: _Node, partners: Mapping[str, Partner]
    ) -> dict[str, ReleaseProfile]:
        exact: dict[str, ReleaseProfile] = {}
        patterns: list[ReleaseProfile] = []
        for key, value in self.mapping(node, "release_profiles").entries:
            profile = self.release_profile(key, value)
            if any(ch in key.value for ch in "*?["):
                if not any(fnmatch.fnmatchcase(p, key.value) for p in partners):
                    self.fail(
                        key.line, f'release profile "{key.value}" matches no declared partner'
                    )
                patterns.append(profile)
            elif key.value not in partners:
                self.fail(
                    key.line,
                    f'release profile "{key.value}": unknown partner; declare it under partners',
                )
            else:
                exact[key.value] = profile

        # Resolve now, once: an exact profile wins over patterns; two patterns claiming the same
        # partner are refused rather than letting file order decide what a partner may see.
        resolved: dict[str, ReleaseProfile] = {}
        for partner in partners:
            if partner in exact:
                resolved[partner] = exact[partner]
                continue
            matching = [p for p in patterns if fnmatch.fnmatchcase(partner, p.match)]
            if len(matching) > 1:
                first, second = matching[0], matching[1]
                self.fail(
                    second.line,
                    f'release profiles "{first.match}" (line {first.line}) and "{second.match}" '
                    f'both match partner "{partner}"; give it its own profile or narrow a pattern',
                )
            if matching:
                resolved[partner] = matching[0]
        return resolved

    def release_profile(self, key: _Scalar, node: _Node) -> ReleaseProfile:
        what = f'release profile "{key.value}"'
        fields = self.keys(self.mapping(node, what), what, required=("classes", "victim_identity"))
        classes: set[Sensitivity] = set()
        classes_node = self.sequence(fields["classes"], f"{what}: classes")
        for item in classes_node.items:
            sensitivity = self.enum_value(item, Sensitivity, f"{what}: class")
            if sensitivity is Sensitivity.VICTIM_IDENTITY:
                self.fail(
                    item.line,
                    f"{what}: VICTIM_IDENTITY is released per victim; set victim_identity instead",
                )
            classes.add(sensitivity)
        identity = self.identity_release(fields["victim_identity"], what)
        return ReleaseProfile(key.value, frozenset(classes), identity, key.line)

    def identity_release(self, node: _Node, what: str) -> IdentityRelease:
        what = f"{what}: victim_identity"
        expected = (
            "always, never, if_released, or "
            "{with_consent: SCOPE[, overrides: [...]][, victims_in_region_only: true]}"
        )
        if isinstance(node, _Scalar):
            mode = self.string(node, what)
            if mode == "always":
                return IdentityRelease("always", always=True)
            if mode == "never":
                return IdentityRelease("never")
            if mode == "if_released":
                return IdentityRelease(
                    "if_released",
                    consent_scope=ConsentScope.LAW_ENFORCEMENT_CONTACT,
                    minor_override=True,
                    imminent_danger_override=True,
                )
            self.fail(node.line, f'{what}: unknown value "{mode}"; expected one of: {expected}')
        fields = self.keys(
            self.mapping(node, what),
            what,
            required=("with_consent",),
            optional=("overrides", "victims_in_region_only"),
        )
        scope = self.enum_value(fields["with_consent"], ConsentScope, f"{what}: with_consent")
        overrides: set[str] = set()
        if "overrides" in fields:
            for item in self.strings(fields["overrides"], f"{what}: overrides"):
                if item.value not in _OVERRIDES:
                    self.fail(
                        item.line,
                        f'{what}: unknown override "{item.value}"; '
                        f"expected one of: {_one_of(_OVERRIDES)}",
                    )
                overrides.add(item.value)
        in_region = False
        if "victims_in_region_only" in fields:
            flag = fields["victims_in_region_only"]
            if not (isinstance(flag, _Scalar) and flag.tag == _BOOL_TAG):
                self.fail(flag.line, f"{what}: victims_in_region_only must be true or false")
            in_region = flag.value.lower() in ("true", "yes", "on")
        return IdentityRelease(
            "with_consent",
            consent_scope=scope,
            minor_override="minor" in overrides,
            imminent_danger_override="imminent_danger" in overrides,
            victims_in_region_only=in_region,
        )

    def rules(
        self,
        node: _Node,
        key_line: int,
        partners: Mapping[str, Partner],
        profiles: Mapping[str, ReleaseProfile],
        ngo_regions: Mapping[str, frozenset[str]],
    ) -> tuple[Rule, ...]:
        items = self.sequence(node, "rules").items
        rules: list[Rule] = []
        first_line: dict[str, int] = {}
        for position, item in enumerate(items, start=1):
            rule = self.rule(item, position, partners, profiles, ngo_regions)
            if rule.id in first_line:
                self.fail(
                    rule.line,
                    f'duplicate rule id "{rule.id}" (first defined at line {first_line[rule.id]})',
                )
            first_line[rule.id] = rule.line
            rules.append(rule)
        # "Nothing silently dropped": some rule must catch what no other rule claims.
        if not any(
            r.is_catch_all
            and len(r.conditions) == 1
            and any(t not in SPECIAL_TARGETS for t in r.route_to)
            for r in rules
        ):
            self.fail(
                key_line,
                f"rules: no catch-all rule; add one with `when: [{NO_OTHER_RULE}]` routing to a "
                "partner (e.g. ccht), so that no referral is silently dropped",
            )
        return tuple(rules)

    def rule(
        self,
        node: _Node,
        position: int,
        partners: Mapping[str, Partner],
        profiles: Mapping[str, ReleaseProfile],
        ngo_regions: Mapping[str, frozenset[str]],
    ) -> Rule:
        rule_map = self.mapping(node, f"rule #{position}")
        fields = self.keys(
            rule_map,
            f"rule #{position}",
            required=("id",),
            optional=("description", "route_to", "priority", "when", "when_any"),
        )
        id_node = fields["id"]
        rule_id = self.string(id_node, f"rule #{position}: id")
        # Once the id is known, the other problems are reported under it.
        for name in ("description", "route_to", "priority"):
            if name not in fields:
                self.fail(rule_map.line, f'rule "{rule_id}": missing key "{name}"')
        if not _RULE_ID_RE.match(rule_id):
            self.fail(
                id_node.line,
                f'rule #{position}: id "{rule_id}" must be 1-32 letters, digits, _ . -',
            )
        what = f'rule "{rule_id}"'
        description = self.string(fields["description"], f"{what}: description")
        if not description.strip():
            self.fail(fields["description"].line, f"{what}: description must not be empty")

        conditions: list[Condition] = []
        if "when" in fields:
            conditions.extend(
                self.condition(c, what, top_level=True)
                for c in self.sequence(fields["when"], f"{what}: when").items
            )
        if "when_any" in fields:
            any_node = self.sequence(fields["when_any"], f"{what}: when_any")
            if not any_node.items:
                self.fail(any_node.line, f"{what}: when_any must not be empty")
            alternatives = tuple(self.condition(c, what, top_level=False) for c in any_node.items)
            conditions.append(Condition(ANY_OF, alternatives=alternatives, line=any_node.line))
        if not conditions:
            self.fail(rule_map.line, f"{what}: needs at least one condition in when or when_any")

        route_to = self.route_to(fields["route_to"], what, partners, profiles, ngo_regions)
        is_catch_all = any(c.name == NO_OTHER_RULE for c in conditions)
        if is_catch_all and ALL_CHOSEN in route_to:
            self.fail(
                fields["route_to"].line,
                f"{what}: {ALL_CHOSEN} cannot be combined with {NO_OTHER_RULE} "
                "(nothing is chosen when it applies)",
            )
        priority = self.enum_value(fields["priority"], Priority, f"{what}: priority")
        return Rule(rule_id, description, tuple(conditions), route_to, priority, id_node.line)

    def route_to(
        self,
        node: _Node,
        what: str,
        partners: Mapping[str, Partner],
        profiles: Mapping[str, ReleaseProfile],
        ngo_regions: Mapping[str, frozenset[str]],
    ) -> tuple[str, ...]:
        targets: list[str] = []
        for item in self.strings(node, f"{what}: route_to"):
            target = item.value
            if target in targets:
                self.fail(item.line, f'{what}: "{target}" is listed twice in route_to')
            if target == NGO_REGION_OF_CONSENTING_VICTIMS and not ngo_regions:
                self.fail(item.line, f"{what}: {target} needs ngo_regions")
            elif target not in SPECIAL_TARGETS:
                if target not in partners:
                    self.fail(
                        item.line,
                        f'{what}: unknown partner "{target}" in route_to; expected a declared '
                        f"partner ({_one_of(partners)}) or one of: {_one_of(SPECIAL_TARGETS)}",
                    )
                if target not in profiles:
                    self.fail(
                        item.line,
                        f'{what}: partner "{target}" has no release profile; add one under '
                        "release_profiles (its id or a pattern such as ngo-*)",
                    )
            targets.append(target)
        return tuple(targets)

    def condition(self, node: _Node, what: str, *, top_level: bool) -> Condition:
        expected = _one_of(_VOCABULARY)
        if isinstance(node, _Scalar):
            name = self.string(node, f"{what}: a condition")
            arg_node: _Node | None = None
        elif isinstance(node, _Map) and len(node.entries) == 1:
            key, arg_node = node.entries[0]
            name = key.value
        else:
            self.fail(
                node.line,
                f"{what}: a condition is a name or a one-key mapping `name: argument`",
            )
        if name not in _VOCABULARY:
            self.fail(node.line, f'{what}: unknown condition "{name}"; expected one of: {expected}')
        arg, _ = _VOCABULARY[name]
        if name == NO_OTHER_RULE and not top_level:
            self.fail(node.line, f"{what}: {NO_OTHER_RULE} cannot be an alternative of any_of")
        if arg is _Arg.NONE:
            if arg_node is not None:
                self.fail(node.line, f'{what}: condition "{name}" takes no argument')
            return Condition(name, line=node.line)
        if arg_node is None:
            self.fail(node.line, f'{what}: condition "{name}" needs {arg.value}')
        cwhat = f'{what}: condition "{name}"'
        if arg is _Arg.SCOPE:
            scope = self.enum_value(arg_node, ConsentScope, cwhat)
            return Condition(name, scope=scope, line=node.line)
        if arg is _Arg.CONDITIONS:
            items = self.sequence(arg_node, cwhat).items
            if not items:
                self.fail(arg_node.line, f"{cwhat} must not be empty")
            alternatives = tuple(self.condition(c, what, top_level=False) for c in items)
            return Condition(name, alternatives=alternatives, line=node.line)
        values: set[str] = set()
        for item in self.strings(arg_node, cwhat, allow_single=arg is _Arg.SOURCES):
            values.add(self.list_value(item, arg, cwhat))
        return Condition(name, values=frozenset(values), line=node.line)

    def list_value(self, item: _Scalar, arg: _Arg, what: str) -> str:
        if arg is _Arg.INDICATORS:
            return self.enum_value(item, Indicator, what)
        if arg is _Arg.LOCATION_KINDS:
            return self.enum_value(item, LocationKind, what)
        if arg is _Arg.STATES:
            if item.value not in US_STATE_CODES:
                self.fail(item.line, f'{what}: "{item.value}" is not a US state or territory code')
            return item.value
        if not _ID_RE.match(item.value):
            self.fail(item.line, f'{what}: "{item.value}" is not a valid source id')
        return item.value
