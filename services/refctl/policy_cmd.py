"""`refctl policy explain` and `refctl policy simulate`: see what a policy does before it is used.

Why: the routing and release policy is a YAML file that operators and counsel change, not code,
and a one-word edit can send a victim's identity to another agency or stop a partner receiving
referrals. The people who change it need to see the effect *before* it is deployed:

* ``explain`` shows, for one referral, the decision exactly as the router would take it: the
  rules that match and why, the priority, and per partner the field classes it would receive and
  which victims' identities on which legal basis (consent, the minor or imminent-danger override,
  or the partner's profile), and which are withheld.
* ``simulate`` replays many referrals (files, or the submitted topic) under the current and a
  candidate policy and lists each referral that would route or release differently, then a
  summary.

Both only read, and both decide with the router's own engine (``route_referral``) on the
router's facts, so what they show is what the router would do. ``simulate`` builds the facts with
a faster equivalent of the router's adapter that it keeps checking against the adapter (see
``fast_facts``). Nothing is published, and the topic is read without a consumer group, so the
router's committed offsets are untouched.

No personal data is printed: a referral is named by its referral id or its source reference,
victims by their ``victim_ref``; the engine's reasons are built without personal data. A referral
that cannot be evaluated is reported with the exception type only, since messages can quote data.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TextIO, TypeVar

from google.protobuf import json_format

from ctroute.referral.v1 import lifecycle_pb2, referral_pb2
from plumbing import config, topics
from referral.adapters.facts import facts_from_referral
from referral.domain.facts import (
    ConsentFact,
    ConsentScope,
    Indicator,
    LocationKind,
    ReferralFacts,
    ReleaseBasis,
    Sensitivity,
    VictimFacts,
)
from referral.domain.policy import Policy, PolicyError, default_policy_path, load_policy
from referral.domain.routing import (
    PartnerRelease,
    RoutingDecision,
    route_referral,
    route_under_each,
)

__all__ = [
    "Change",
    "ChangeKind",
    "CommandError",
    "Progress",
    "ReferralDifference",
    "SimulationResult",
    "Simulator",
    "diff_decisions",
    "explain",
    "fast_facts",
    "read_referral_files",
    "read_submitted_topic",
    "register",
    "render_explanation",
    "simulate",
]

# How often a long simulation reports progress on stderr.
PROGRESS_EVERY_REFERRALS = 10_000
PROGRESS_EVERY_SECONDS = 1.0
# Reading the submitted topic gives up when the broker sends nothing for this long.
TOPIC_IDLE_TIMEOUT_S = 30.0
KAFKA_CONNECT_TIMEOUT_MS = 10_000
# Referrals that cannot be evaluated are listed individually up to this many.
MAX_SKIPPED_SHOWN = 10
# How often the simulator checks its fast facts against the router's adapter (see fast_facts).
FACTS_CHECK_FIRST = 256
FACTS_CHECK_EVERY = 1024

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_REFERRAL_SUFFIXES = (".json", *_JSONL_SUFFIXES)
_EXPECTED_SHAPE = (
    'expected a SubmitReferralRequest in protobuf\'s JSON mapping, {"referral": {"source": ..., '
    '"sourceReference": ..., ...}}'
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CommandError(Exception):
    """A problem the user can fix; the message is one line saying what went wrong and what to do."""


# --- inputs ---------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_policy_file(path: str | None) -> tuple[Policy, str]:
    """The policy at ``path`` (default: ``CTROUTE_POLICY`` or the shipped default) and its path."""
    chosen = Path(path) if path else (config.policy_path() or default_policy_path())
    try:
        return load_policy(chosen), str(chosen)
    except PolicyError as error:
        raise CommandError(f"{_one_line(str(error))}; fix the policy file and run again") from error


def parse_time(text: str) -> datetime:
    """An ISO 8601 time or date as an aware datetime; a time without a zone is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as error:
        raise CommandError(
            f"--at {text!r} is not an ISO 8601 time; write it like 2026-03-01T12:00:00Z"
        ) from error
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _referral_from_json(document: object, where: str) -> referral_pb2.Referral:
    """A Referral from a SubmitReferralRequest (or ReferralSubmitted, or bare Referral) mapping."""
    if not isinstance(document, dict):
        raise CommandError(f"{where}: not a JSON object; {_EXPECTED_SHAPE}")
    body = document.get("referral", document)
    if not isinstance(body, dict):
        raise CommandError(f'{where}: "referral" is not a JSON object; {_EXPECTED_SHAPE}')
    referral = referral_pb2.Referral()
    try:
        json_format.ParseDict(body, referral)
    except json_format.ParseError as error:
        raise CommandError(
            f"{where}: not a referral in protobuf's JSON mapping ({_one_line(str(error))}); "
            f"{_EXPECTED_SHAPE}"
        ) from error
    return referral


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CommandError(f"{path} is not UTF-8 text; give a referral JSON file") from error
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CommandError(f"cannot read {path}: {reason}; check the path") from error


def _json_document(text: str, where: str, line_offset: int = 0) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CommandError(
            f"{where}:{error.lineno + line_offset}: not valid JSON ({error.msg}, column "
            f"{error.colno}); fix the file"
        ) from error


def read_referral_file(path: Path) -> Iterator[tuple[referral_pb2.Referral, str]]:
    """The referrals of one file with where each came from (``file`` or ``file:line``).

    A ``.jsonl``/``.ndjson`` file holds one referral per line (blank lines are skipped); any
    other file holds one JSON document: a referral or a list of referrals.
    """
    text = _read_text(path)
    if path.suffix in _JSONL_SUFFIXES:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                where = f"{path}:{number}"
                yield _referral_from_json(_json_document(line, str(path), number - 1), where), where
        return
    document = _json_document(text, str(path))
    if isinstance(document, list):
        for index, item in enumerate(document):
            where = f"{path}[{index}]"
            yield _referral_from_json(item, where), where
    else:
        yield _referral_from_json(document, str(path)), str(path)


def referral_files(paths: Sequence[str]) -> list[Path]:
    """The files to read for the given files and directories (their .json/.jsonl files, sorted).

    Checked before anything is read, so a wrong path fails at once rather than mid-run.
    """
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in _REFERRAL_SUFFIXES
            )
            if not found:
                raise CommandError(
                    f"{path} holds no .json or .jsonl files; give referral files or a directory "
                    "of them"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise CommandError(f"cannot read {path}: no such file; check the path")
    return files


def read_referral_files(paths: Sequence[str]) -> Iterator[tuple[referral_pb2.Referral, str]]:
    """The referrals of the given files and directories, in order (see ``referral_files``)."""
    for path in referral_files(paths):
        yield from read_referral_file(path)


@dataclass
class TopicStats:
    """What reading the submitted topic found besides referrals."""

    records: int = 0
    undecodable: int = 0
    other_events: int = 0


def read_submitted_topic(
    bootstrap_servers: str,
    stats: TopicStats,
    *,
    on_idle: Callable[[], None] = lambda: None,
    idle_timeout: float = TOPIC_IDLE_TIMEOUT_S,
) -> Iterator[tuple[referral_pb2.Referral, str]]:
    """Every referral submitted or amended on the submitted topic, up to its end at the start.

    Read from the beginning of every partition without a consumer group, so nothing is committed
    and the router is not disturbed; records written after the start are left for a later run.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from plumbing.envelope import EnvelopeError, decode_event
    from plumbing.kafka import consumer_settings

    topic = topics.SUBMITTED
    unreachable = (
        f"cannot reach Kafka at {bootstrap_servers}; is the broker running? "
        "(start it with `make run`, or pass --bootstrap-servers)"
    )
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            max_poll_records=2000,
            bootstrap_timeout_ms=KAFKA_CONNECT_TIMEOUT_MS,
            **consumer_settings(),
        )
    except KafkaError as error:
        raise CommandError(f"{unreachable} ({type(error).__name__})") from error
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise CommandError(
                f"no topic {topic} at {bootstrap_servers}; is this the system's broker? "
                "(pass --bootstrap-servers)"
            )
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends: dict[Any, int] = consumer.end_offsets(assigned)
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        last_record = time.monotonic()
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            batches = consumer.poll(timeout_ms=500)
            if not batches:
                on_idle()
                if time.monotonic() - last_record > idle_timeout:
                    raise CommandError(
                        f"no record from {topic} at {bootstrap_servers} for {idle_timeout:.0f} s "
                        "before its end; is the broker healthy? run again"
                    )
                continue
            last_record = time.monotonic()
            for tp, records in batches.items():
                end = ends.get(tp, 0)
                for record in records:
                    if record.offset >= end:
                        continue
                    stats.records += 1
                    try:
                        _, event = decode_event(record.headers, record.value)
                    except EnvelopeError:
                        stats.undecodable += 1
                        continue
                    where = f"{topic}[{record.partition}]@{record.offset}"
                    if isinstance(
                        event, lifecycle_pb2.ReferralSubmitted | lifecycle_pb2.ReferralAmended
                    ):
                        yield event.referral, where
                    else:
                        stats.other_events += 1
    except KafkaError as error:
        raise CommandError(
            f"reading {topic} failed: {unreachable} ({type(error).__name__})"
        ) from error
    finally:
        consumer.close()


def referral_label(referral: referral_pb2.Referral, where: str) -> str:
    """How a referral is named in output: its id, else its source reference, else where it was."""
    if referral.referral_id:
        return referral.referral_id
    if referral.source_reference:
        if referral.source:
            return f"{referral.source}/{referral.source_reference}"
        return referral.source_reference
    return where or "(unnamed referral)"


# --- facts, fast ----------------------------------------------------------------------------
#
# Why a second extraction: ``facts_from_referral`` is the single source of truth, but it spends
# about as long turning a referral into facts as the engine spends routing it (enum names looked
# up by string, timestamps converted through protobuf's Python helpers), and a simulation pays it
# on every referral. ``fast_facts`` builds the same ReferralFacts with lookup tables and plain
# arithmetic. It must agree with the adapter exactly: the unit tests compare both on the demo and
# on thousands of synthetic referrals, and the Simulator compares them again while it runs (the
# first referrals, then one in every FACTS_CHECK_EVERY) and falls back to the adapter for the
# rest of the run when they ever disagree.

_E = TypeVar("_E", bound=Enum)

# A Timestamp's valid range (0001-01-01 to 9999-12-31), as protobuf's own ToDatetime checks it.
_TIMESTAMP_SECONDS_MIN = -62_135_596_800
_TIMESTAMP_SECONDS_MAX = 253_402_300_799
_NO_GRANT = datetime.min.replace(tzinfo=UTC)


def _enum_table(proto_enum: Any, prefix: str, domain: type[_E]) -> dict[int, _E]:
    """Proto enum number -> domain enum member, for the values both know (0 is never included)."""
    table: dict[int, _E] = {}
    for value in proto_enum.DESCRIPTOR.values:
        name = value.name.removeprefix(prefix)
        if value.number and name in domain.__members__:
            table[value.number] = domain[name]
    return table


_INDICATORS = _enum_table(referral_pb2.Indicator, "INDICATOR_", Indicator)
_LOCATION_KINDS = _enum_table(referral_pb2.LocationKind, "LOCATION_KIND_", LocationKind)
_SCOPES = _enum_table(referral_pb2.ConsentScope, "CONSENT_SCOPE_", ConsentScope)


def _instant(seconds: int, nanos: int) -> datetime:
    """A Timestamp as an aware UTC datetime, exactly as protobuf's ``ToDatetime`` gives it."""
    if not (_TIMESTAMP_SECONDS_MIN <= seconds <= _TIMESTAMP_SECONDS_MAX and 0 <= nanos < 10**9):
        raise ValueError("timestamp out of range")
    if nanos == 0 and seconds >= 0:  # the common case, and the fastest constructor for it
        return datetime.fromtimestamp(seconds, UTC)
    return _EPOCH + timedelta(0, seconds, nanos // 1000)


def _fast_consent(consent: referral_pb2.Consent) -> ConsentFact:
    has = consent.HasField
    if has("granted_at"):
        stamp = consent.granted_at
        granted = _instant(stamp.seconds, stamp.nanos)
    else:
        granted = _NO_GRANT
    expires: datetime | None = None
    if has("expires_at"):
        stamp = consent.expires_at
        expires = _instant(stamp.seconds, stamp.nanos)
    withdrawn: datetime | None = None
    if has("withdrawn_at"):
        stamp = consent.withdrawn_at
        withdrawn = _instant(stamp.seconds, stamp.nanos)
    return ConsentFact(_SCOPES[consent.scope], granted, expires, withdrawn)


def _fast_victim(victim: referral_pb2.PotentialVictim) -> VictimFacts:
    has = victim.HasField
    dob = victim.date_of_birth
    consents = victim.consents
    return VictimFacts(
        victim.victim_ref,
        victim.age if has("age") else None,
        date.fromisoformat(dob) if dob else None,
        victim.nationality or None,
        victim.us_state or None,
        tuple([_fast_consent(c) for c in consents if c.scope]) if consents else (),
        bool(
            victim.full_name
            or dob
            or victim.phone
            or victim.email
            or victim.description
            or has("home_address")
            or len(victim.documents)
        ),
    )


def fast_facts(referral: referral_pb2.Referral) -> ReferralFacts:
    """The same facts as ``facts_from_referral``, built faster (see above).

    An enum value the domain does not know raises KeyError where the adapter raises ValueError;
    both make the referral one that cannot be evaluated.
    """
    indicators = referral.indicators
    victims = referral.victims
    locations = referral.locations
    goods = referral.goods
    kinds = _LOCATION_KINDS
    return ReferralFacts(
        referral.referral_id,
        referral.source,
        frozenset([_INDICATORS[i] for i in indicators if i]) if indicators else frozenset(),
        tuple([_fast_victim(v) for v in victims]) if victims else (),
        referral.imminent_danger,
        frozenset([kinds[loc.kind] for loc in locations if loc.kind]) if locations else frozenset(),
        tuple([loc.us_state for loc in locations if loc.us_state]) if locations else (),
        referral.HasField("vessel"),
        any([g.destined_for_us for g in goods]) if goods else False,
    )


def _full_label(referral: referral_pb2.Referral, where: str) -> str:
    label = referral_label(referral, where)
    return f"{label} ({where})" if where and where != label else label


# --- explain --------------------------------------------------------------------------------

_CLASS_ORDER = {cls: index for index, cls in enumerate(Sensitivity)}

_BASIS_WORDS = {
    ReleaseBasis.PARTNER_PROFILE: "partner profile",
    ReleaseBasis.CONSENT: "consent",
    ReleaseBasis.MINOR_OVERRIDE: "minor override",
    ReleaseBasis.IMMINENT_DANGER_OVERRIDE: "imminent-danger override",
}


def _classes(release: PartnerRelease) -> list[str]:
    return [c.value for c in sorted(release.released_classes, key=_CLASS_ORDER.__getitem__)]


_SCOPE_WORDS = {
    ConsentScope.LAW_ENFORCEMENT_CONTACT: "consent to law-enforcement contact",
    ConsentScope.VICTIM_SERVICES_REFERRAL: "consent to a victim-services referral",
    ConsentScope.IMMIGRATION_RELIEF: "consent to immigration-relief screening",
}


def _basis_text(basis: ReleaseBasis, policy: Policy, partner: str) -> str:
    """The legal basis in words; for consent, which consent the partner's profile requires."""
    if basis is ReleaseBasis.CONSENT:
        scope = policy.profile_for(partner).victim_identity.consent_scope
        if scope is not None:
            return _SCOPE_WORDS[scope]
    return _BASIS_WORDS[basis]


def decision_time(
    referral: referral_pb2.Referral, at: datetime | None, default: datetime
) -> datetime:
    """When to decide: ``--at`` if given, else when the intake received the referral, else
    ``default`` (the time of the run)."""
    if at is not None:
        return at
    if referral.HasField("received_at"):
        stamp = referral.received_at
        return _instant(stamp.seconds, stamp.nanos)
    return default


def explain(
    referral: referral_pb2.Referral,
    policy: Policy,
    policy_path: str,
    now: datetime,
    where: str = "",
) -> dict[str, Any]:
    """The decision for one referral as a JSON-ready mapping, in the words of the policy."""
    facts = facts_from_referral(referral)
    decision = route_referral(facts, policy, now)
    rules = {rule.id: rule for rule in policy.rules}
    return {
        "referral": {
            "label": referral_label(referral, where),
            "referral_id": referral.referral_id or None,
            "source": referral.source,
            "source_reference": referral.source_reference,
            "file": where or None,
            "victims": [v.victim_ref for v in facts.victims],
            "victims_with_identity": [v.victim_ref for v in facts.victims if v.has_identity],
        },
        "policy": {"file": policy_path, "version": decision.policy_version},
        "evaluated_at": now.isoformat(),
        "priority": decision.priority.value,
        "matched_rules": [
            {"rule_id": m.rule_id, "reason": m.reason, "description": rules[m.rule_id].description}
            for m in decision.matched_rules
        ],
        "partners": [
            {
                "partner": p.partner,
                "description": policy.partners[p.partner].description,
                "priority": p.priority.value,
                "rule_ids": list(p.rule_ids),
                "released_classes": _classes(p),
                "victim_identities": [
                    {
                        "victim_ref": v.victim_ref,
                        "basis": v.basis.value,
                        "basis_text": _basis_text(v.basis, policy, p.partner),
                    }
                    for v in p.victim_identities
                ],
                "withheld_victim_refs": list(p.withheld_victim_refs),
            }
            for p in decision.partners
        ],
        "published": False,
    }


def render_explanation(explained: dict[str, Any]) -> str:
    """The explanation as text a policy officer reads top to bottom."""
    ref = explained["referral"]
    lines = [
        f"referral   {ref['label']}"
        + (f" ({ref['file']})" if ref["file"] and ref["file"] != ref["label"] else ""),
        f"source     {ref['source'] or '(none)'}",
        f"victims    {', '.join(ref['victims']) or 'none'}"
        + (
            f" (with identifying fields: {', '.join(ref['victims_with_identity']) or 'none'})"
            if ref["victims"]
            else ""
        ),
        f"policy     {explained['policy']['file']} (version {explained['policy']['version']})",
        f"decided at {explained['evaluated_at']}",
        f"priority   {explained['priority']}",
        "",
        "matched rules:",
    ]
    width = max((len(m["rule_id"]) for m in explained["matched_rules"]), default=2)
    for match in explained["matched_rules"]:
        lines.append(f"  {match['rule_id']:<{width}}  {match['reason']}")
        lines += textwrap.wrap(
            f"({_one_line(match['description'])})",
            width=100,
            initial_indent=" " * (width + 4),
            subsequent_indent=" " * (width + 5),
        )
    lines += ["", f"partners ({len(explained['partners'])}):"]
    for partner in explained["partners"]:
        lines.append(
            f"  {partner['partner']}  {partner['priority']}  rules {', '.join(partner['rule_ids'])}"
        )
        lines.append(f"    who:               {partner['description']}")
        lines.append(f"    classes:           {', '.join(partner['released_classes'])}")
        released = [f"{v['victim_ref']} ({v['basis_text']})" for v in partner["victim_identities"]]
        lines.append(f"    identity released: {', '.join(released) or 'none'}")
        lines.append(
            f"    identity withheld: {', '.join(partner['withheld_victim_refs']) or 'none'}"
        )
    lines += ["", "nothing was published"]
    return "\n".join(lines)


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        policy, policy_path = load_policy_file(args.policy)
        at = parse_time(args.at) if args.at else None
        path = Path(args.file)
        if not path.is_file():
            raise CommandError(f"cannot read {path}: not a file; give a referral JSON file")
        referrals = list(read_referral_file(path))
        if len(referrals) != 1:
            raise CommandError(
                f"{path} holds {len(referrals)} referrals; explain takes one "
                "(use `refctl policy simulate --referrals` for many)"
            )
        referral, where = referrals[0]
        _warn_if_invalid(referral, where)
        now = decision_time(referral, at, datetime.now(UTC))
        try:
            explained = explain(referral, policy, policy_path, now, where)
        except ValueError as error:
            raise CommandError(
                f"{where}: the referral cannot be evaluated ({type(error).__name__}); "
                "fix the fields the intake would reject"
            ) from error
    except CommandError as error:
        return _fail(str(error))
    if args.json:
        print(json.dumps(explained, indent=2))
    else:
        print(render_explanation(explained))
    return 0


def _warn_if_invalid(referral: referral_pb2.Referral, where: str) -> None:
    """Say (on stderr) when the intake would reject the referral: its routing is then moot."""
    from plumbing.validation import violations_of

    violations = violations_of(referral)
    if violations:
        print(
            f"refctl: warning: the intake would reject {where}: "
            + "; ".join(str(v) for v in violations),
            file=sys.stderr,
        )


# --- simulate -------------------------------------------------------------------------------


class ChangeKind(StrEnum):
    """A kind of difference between the current and the candidate decision."""

    RECIPIENT_ADDED = "recipient added"
    RECIPIENT_REMOVED = "recipient removed"
    PRIORITY = "referral priority"
    PARTNER_PRIORITY = "partner priority"
    RELEASED_CLASSES = "released classes"
    VICTIM_IDENTITY = "victim identity release"


@dataclass(frozen=True, slots=True)
class Change:
    """One difference; ``partner`` is empty for the referral's own priority."""

    kind: ChangeKind
    partner: str
    detail: str

    def __str__(self) -> str:
        if self.kind is ChangeKind.RECIPIENT_ADDED:
            return f"+{self.partner} ({self.detail})"
        if self.kind is ChangeKind.RECIPIENT_REMOVED:
            return f"-{self.partner}"
        if self.kind is ChangeKind.PRIORITY:
            return f"priority {self.detail}"
        if self.kind is ChangeKind.PARTNER_PRIORITY:
            return f"{self.partner} priority {self.detail}"
        if self.kind is ChangeKind.RELEASED_CLASSES:
            return f"{self.partner} classes {self.detail}"
        return f"{self.partner} identity {self.detail}"


@dataclass(frozen=True, slots=True)
class ReferralDifference:
    """A referral that would route or release differently under the candidate."""

    label: str
    changes: tuple[Change, ...]

    def __str__(self) -> str:
        return f"{self.label}: " + "; ".join(str(c) for c in self.changes)


def _set_change(before: Iterable[str], after: Iterable[str]) -> str:
    old, new = set(before), set(after)
    return " ".join([*(f"+{x}" for x in sorted(new - old)), *(f"-{x}" for x in sorted(old - new))])


def _identity_change(current: PartnerRelease, candidate: PartnerRelease) -> str:
    old = {v.victim_ref: v.basis for v in current.victim_identities}
    new = {v.victim_ref: v.basis for v in candidate.victim_identities}
    parts = [f"+{ref}({new[ref].value})" for ref in new if ref not in old]
    parts += [f"-{ref}" for ref in old if ref not in new]
    parts += [
        f"{ref} basis {old[ref].value}->{new[ref].value}"
        for ref in old
        if ref in new and old[ref] is not new[ref]
    ]
    return " ".join(parts)


def diff_decisions(current: RoutingDecision, candidate: RoutingDecision) -> tuple[Change, ...]:
    """How the candidate's decision differs in routing or release; empty when it does not.

    Matched rules and reasons are not compared: a rule renamed or reworded that routes and
    releases the same is no change for any partner. Withheld victims follow from the released
    ones (the facts are the same), so they are not compared either.
    """
    old_partners, new_partners = current.partners, candidate.partners
    # The common case, first and cheaply: both decisions release the same to the same partners.
    if current.priority is candidate.priority and len(old_partners) == len(new_partners):
        for a, b in zip(old_partners, new_partners):  # noqa: B905 - lengths are equal
            if not (
                a.partner == b.partner
                and a.priority is b.priority
                and a.released_classes == b.released_classes
                and a.victim_identities == b.victim_identities
            ):
                break
        else:
            return ()
    changes: list[Change] = []
    if current.priority is not candidate.priority:
        changes.append(
            Change(ChangeKind.PRIORITY, "", f"{current.priority.value}->{candidate.priority.value}")
        )
    old = {p.partner: p for p in old_partners}
    new = {p.partner: p for p in new_partners}
    for partner in sorted(old.keys() | new.keys()):
        before, after = old.get(partner), new.get(partner)
        if before is None and after is not None:
            refs = ",".join(v.victim_ref for v in after.victim_identities)
            detail = f"{after.priority.value}" + (f", identities {refs}" if refs else "")
            changes.append(Change(ChangeKind.RECIPIENT_ADDED, partner, detail))
        elif after is None:
            changes.append(Change(ChangeKind.RECIPIENT_REMOVED, partner, ""))
        elif before is not None:
            if before.priority is not after.priority:
                changes.append(
                    Change(
                        ChangeKind.PARTNER_PRIORITY,
                        partner,
                        f"{before.priority.value}->{after.priority.value}",
                    )
                )
            if before.released_classes != after.released_classes:
                changes.append(
                    Change(
                        ChangeKind.RELEASED_CLASSES,
                        partner,
                        _set_change(before.released_classes, after.released_classes),
                    )
                )
            if before.victim_identities != after.victim_identities:
                changes.append(
                    Change(ChangeKind.VICTIM_IDENTITY, partner, _identity_change(before, after))
                )
    return tuple(changes)


class Simulator:
    """Evaluates referrals under the current and the candidate policy and diffs the decisions.

    ``evaluate`` is the whole per-referral work of ``policy simulate`` (and what the benchmark
    times): protobuf to facts once, the router's ``route_referral`` under each policy at the same
    instant, then the diff. Facts come from ``fast_facts``, checked against the router's adapter
    on the first FACTS_CHECK_FIRST referrals and one in every FACTS_CHECK_EVERY after; if the two
    ever disagree the rest of the run uses the adapter and ``facts_disagreed`` is set.
    """

    def __init__(
        self,
        current: Policy,
        candidate: Policy,
        *,
        at: datetime | None = None,
        default_now: datetime | None = None,
        on_facts_disagreement: Callable[[], None] | None = None,
    ) -> None:
        self.current = current
        self.candidate = candidate
        self.policies = (current, candidate)
        self.at = at
        self.default_now = default_now or datetime.now(UTC)
        self.facts_disagreed = False
        self._on_disagreement = on_facts_disagreement
        self._facts: Callable[[referral_pb2.Referral], ReferralFacts] = fast_facts
        self._seen = 0

    def facts(self, referral: referral_pb2.Referral) -> ReferralFacts:
        """The referral's facts, as the router's adapter would give them."""
        self._seen += 1
        if self._seen > FACTS_CHECK_FIRST and self._seen % FACTS_CHECK_EVERY:
            return self._facts(referral)
        return self._checked_facts(referral)

    def _checked_facts(self, referral: referral_pb2.Referral) -> ReferralFacts:
        expected = facts_from_referral(referral)
        if self._facts is fast_facts:
            try:
                agree = fast_facts(referral) == expected
            except (ValueError, KeyError, TypeError, ArithmeticError):
                agree = False
            if not agree:
                self._facts = facts_from_referral
                self.facts_disagreed = True
                if self._on_disagreement is not None:
                    self._on_disagreement()
        return expected

    def evaluate(self, referral: referral_pb2.Referral) -> tuple[Change, ...]:
        """The differences for one referral; raises what the adapter raises for a bad one."""
        # self.facts(referral), inlined: this runs for every referral of a simulation.
        self._seen = seen = self._seen + 1
        if seen > FACTS_CHECK_FIRST and seen % FACTS_CHECK_EVERY:
            facts = self._facts(referral)
        else:
            facts = self._checked_facts(referral)
        now = self.at
        if now is None:
            if referral.HasField("received_at"):
                stamp = referral.received_at
                now = _instant(stamp.seconds, stamp.nanos)
            else:
                now = self.default_now
        current, candidate = route_under_each(facts, self.policies, now)
        return diff_decisions(current, candidate)


@dataclass
class SimulationResult:
    """Counts of a simulation run; ``by_kind`` counts referrals, ``by_partner`` partner changes."""

    evaluated: int = 0
    differing: int = 0
    skipped: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    by_kind: Counter[ChangeKind] = field(default_factory=Counter)
    by_partner: dict[ChangeKind, Counter[str]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Referrals evaluated per second of elapsed time."""
        return self.evaluated / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_rate(self) -> float:
        """Referrals evaluated per second of this process's CPU time (one core)."""
        return self.evaluated / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def count(self, changes: tuple[Change, ...]) -> None:
        self.differing += 1
        for kind in {c.kind for c in changes}:
            self.by_kind[kind] += 1
        for change in changes:
            if change.partner:
                self.by_partner.setdefault(change.kind, Counter())[change.partner] += 1


class Progress:
    """Progress lines on a stream: every ~10k referrals or every second, after the first second."""

    def __init__(self, stream: TextIO, *, started: float | None = None) -> None:
        self.stream = stream
        self.started = started if started is not None else time.monotonic()
        self.last_time = self.started
        self.last_count = 0

    def tick(self, result: SimulationResult) -> None:
        count = result.evaluated
        if count - self.last_count < PROGRESS_EVERY_REFERRALS and count & 255:
            return
        now = time.monotonic()
        due = count - self.last_count >= PROGRESS_EVERY_REFERRALS or (
            now - self.last_time >= PROGRESS_EVERY_SECONDS
        )
        # A short run prints nothing: progress only matters once a run takes a while.
        if due and now - self.started >= PROGRESS_EVERY_SECONDS:
            self.show(result, now)
        elif due:
            self.last_count = count

    def idle(self, result: SimulationResult) -> None:
        now = time.monotonic()
        if now - self.last_time >= PROGRESS_EVERY_SECONDS:
            self.show(result, now)

    def show(self, result: SimulationResult, now: float) -> None:
        elapsed = now - self.started
        rate = result.evaluated / elapsed if elapsed > 0 else 0.0
        print(
            f"simulate: {result.evaluated} referrals, {rate:.0f}/s, {result.differing} differ",
            file=self.stream,
            flush=True,
        )
        self.last_time = now
        self.last_count = result.evaluated


def simulate(
    referrals: Iterable[tuple[referral_pb2.Referral, str]],
    simulator: Simulator,
    *,
    limit: int = 0,
    on_difference: Callable[[ReferralDifference], None] | None = None,
    on_skipped: Callable[[str, BaseException], None] | None = None,
    progress: Progress | None = None,
    result: SimulationResult | None = None,
) -> SimulationResult:
    """Evaluate each referral under both policies; count and report the ones that differ."""
    result = result if result is not None else SimulationResult()
    evaluate = simulator.evaluate
    started = time.perf_counter()
    cpu_started = time.process_time()
    for referral, where in referrals:
        try:
            changes = evaluate(referral)
        except (ValueError, KeyError, TypeError, ArithmeticError) as error:
            result.skipped += 1
            if on_skipped is not None:
                on_skipped(_full_label(referral, where), error)
            continue
        result.evaluated += 1
        if changes:
            result.count(changes)
            if on_difference is not None:
                on_difference(ReferralDifference(_full_label(referral, where), changes))
        if progress is not None:
            progress.tick(result)
        if limit and result.evaluated >= limit:
            break
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    return result


def render_summary(result: SimulationResult, *, shown: int) -> str:
    """The summary a policy officer reads after the list of differing referrals."""
    lines = [
        f"evaluated {result.evaluated} referrals in {result.seconds:.2f} s ({result.rate:.0f}/s): "
        f"{result.differing} would route or release differently",
    ]
    if result.differing > shown:
        lines.append(
            f"  (listed the first {shown} of {result.differing}; use --show N to list more)"
        )
    if result.skipped:
        lines.append(f"  {result.skipped} could not be evaluated (skipped)")
    lines.append("changes by kind (referrals affected; partners):")
    for kind in ChangeKind:
        partners = result.by_partner.get(kind, Counter())
        detail = ", ".join(f"{p} {n}" for p, n in sorted(partners.items()))
        lines.append(
            f"  {kind.value:<24} {result.by_kind[kind]:>7}" + (f"  {detail}" if detail else "")
        )
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        candidate = load_policy_file(args.policy)
        current = load_policy_file(args.against)
        at = parse_time(args.at) if args.at else None
        if args.limit < 0 or args.show < 0:
            raise CommandError("--limit and --show take a number of referrals, 0 or more")
        if current[0].version == candidate[0].version:
            print(
                f"refctl: note: the candidate and current policies are the same file content "
                f"(version {current[0].version}); nothing can differ",
                file=sys.stderr,
            )
        simulator = Simulator(
            current[0],
            candidate[0],
            at=at,
            on_facts_disagreement=lambda: print(
                "refctl: note: the simulator's fast facts extraction disagrees with the router's "
                "(referral.adapters.facts); using the router's for the rest of the run (slower)",
                file=sys.stderr,
            ),
        )
        result = SimulationResult()
        progress = Progress(sys.stderr)
        stats = TopicStats()
        if args.from_topic:
            source: Iterable[tuple[referral_pb2.Referral, str]] = read_submitted_topic(
                args.bootstrap_servers, stats, on_idle=lambda: progress.idle(result)
            )
        else:
            files = referral_files(args.referrals)
            source = (item for path in files for item in read_referral_file(path))
        shown = 0
        print(f"current:   {current[1]} (version {current[0].version})")
        print(f"candidate: {candidate[1]} (version {candidate[0].version})", flush=True)

        def show(difference: ReferralDifference) -> None:
            nonlocal shown
            if shown < args.show:
                print(difference, flush=False)
                shown += 1

        def skipped(label: str, error: BaseException) -> None:
            if result.skipped <= MAX_SKIPPED_SHOWN:
                print(
                    f"refctl: {label}: cannot be evaluated ({type(error).__name__}); "
                    "check it with `refctl policy explain`",
                    file=sys.stderr,
                )

        simulate(
            source,
            simulator,
            limit=args.limit,
            on_difference=show,
            on_skipped=skipped,
            progress=progress,
            result=result,
        )
    except CommandError as error:
        return _fail(str(error))
    if args.from_topic:
        print(
            f"read {stats.records} records from {topics.SUBMITTED}: "
            f"{stats.other_events} other events, {stats.undecodable} undecodable"
        )
    if not args.from_topic and result.evaluated + result.skipped == 0:
        return _fail("no referrals found; give .json or .jsonl referral files")
    print(render_summary(result, shown=shown))
    return 0


# --- command line ---------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"refctl: {message}", file=sys.stderr)
    return 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `refctl policy explain|simulate` to refctl's commands."""
    policy = commands.add_parser(
        "policy", help="explain or simulate routing policies (publishes nothing)"
    )
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    default_policy = "CTROUTE_POLICY or the shipped default"

    explain_cmd = sub.add_parser(
        "explain",
        help="show how one referral would be routed and what each partner would receive",
    )
    explain_cmd.add_argument("file", help="a SubmitReferralRequest in protobuf's JSON mapping")
    explain_cmd.add_argument("--policy", help=f"policy file (default: {default_policy})")
    explain_cmd.add_argument(
        "--at",
        help="decide as of this ISO 8601 time (default: the referral's received_at, else now); "
        "it decides which consents are in force and who is a minor",
    )
    explain_cmd.add_argument("--json", action="store_true", help="print the explanation as JSON")
    explain_cmd.set_defaults(run=cmd_explain)

    simulate_cmd = sub.add_parser(
        "simulate",
        help="replay referrals under a candidate policy and report what would change",
    )
    simulate_cmd.add_argument("--policy", required=True, help="the candidate policy file")
    simulate_cmd.add_argument(
        "--against", help=f"the current policy file (default: {default_policy})"
    )
    inputs = simulate_cmd.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--referrals",
        nargs="+",
        metavar="PATH",
        help="referral files (.json: one referral or a list; .jsonl: one per line) or "
        "directories of them",
    )
    inputs.add_argument(
        "--from-topic",
        action="store_true",
        help=f"replay every referral on {topics.SUBMITTED} (from the beginning to its current end)",
    )
    simulate_cmd.add_argument(
        "--bootstrap-servers",
        default=config.kafka_bootstrap_servers(),
        help="Kafka brokers, for --from-topic",
    )
    simulate_cmd.add_argument(
        "--at",
        help="decide as of this ISO 8601 time (default: each referral's received_at, else now)",
    )
    simulate_cmd.add_argument(
        "--limit", type=int, default=0, help="stop after N referrals (0: all)"
    )
    simulate_cmd.add_argument(
        "--show", type=int, default=100, help="list at most N differing referrals (default 100)"
    )
    simulate_cmd.set_defaults(run=cmd_simulate)
