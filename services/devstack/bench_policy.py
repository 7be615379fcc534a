"""`make bench`: how many referrals a second `refctl policy simulate` evaluates, on one core.

Why: a policy change should be tried against everything the system has ever received (the whole
submitted topic, hundreds of thousands of referrals) while the policy officer waits, so the
replay must run at thousands of referrals a second, not hundreds. The target is 20,000 a second
on one core.

What is timed is exactly the per-referral work of `policy simulate`: ``refctl.policy_cmd.simulate``
driving ``Simulator.evaluate`` (protobuf to facts, the router's ``route_referral`` under the
current and the candidate policy, then the diff). Generating the referrals, loading the policies
and reading JSON or Kafka are not timed: they are not the evaluation, and reading depends on
where the referrals come from.

The referrals are synthetic but shaped like the sources of the domain note (tip line, hotline,
e-Allegations, screening, adjudication, boardings, airline crews): varied indicators, victims with
ages or dates of birth, consents in force, expired or withdrawn, states and nationalities,
locations, vessels and goods. The seed is fixed, so every run evaluates the same referrals. The
candidate is the shipped default with a few realistic edits (smuggling-only to the CCHT desk,
immigration screening at HIGH, USCIS receiving minors' identities), so some referrals differ and
the diff path is exercised too.

Run ``python -m devstack.bench_policy [--count 100000]``; results also go to
``bench/results/policy_simulate.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import __version__ as protobuf_version

from ctroute.referral.v1 import referral_pb2 as pb
from refctl.policy_cmd import SimulationResult, Simulator, simulate
from referral.domain.policy import (
    Policy,
    PolicyError,
    default_policy_path,
    load_policy,
    parse_policy,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "policy_simulate.json"
TARGET_PER_SECOND = 20_000
DEFAULT_COUNT = 100_000
DEFAULT_SEED = 4417
# The instant the synthetic referrals are received around; consents and ages are relative to it.
REFERENCE_TIME = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# --- the candidate policy -------------------------------------------------------------------

# (what the edit means, the rule or profile it is in, the text before, the text after)
_CANDIDATE_EDITS: tuple[tuple[str, str, str, str], ...] = (
    ("R10 routes smuggling-only to ccht", "  - id: R10\n", "route_to: [hsi]", "route_to: [ccht]"),
    ("R9 priority HIGH", "  - id: R9\n", "priority: ROUTINE", "priority: HIGH"),
    (
        "uscis receives minors' identities",
        "  uscis:\n",
        "with_consent: IMMIGRATION_RELIEF\n",
        "with_consent: IMMIGRATION_RELIEF\n      overrides: [minor]\n",
    ),
)


def candidate_policy_text(default_text: str) -> tuple[str, list[str]]:
    """The default policy with the benchmark's edits, and what each edit means.

    Each edit replaces the first occurrence of its text after its anchor; an anchor or text that
    is missing (the default policy was reorganised) is an error rather than a silently weaker
    benchmark.
    """
    text = default_text
    applied: list[str] = []
    for meaning, anchor, before, after in _CANDIDATE_EDITS:
        start = text.find(anchor)
        at = text.find(before, start) if start >= 0 else -1
        if at < 0:
            raise ValueError(
                f"cannot apply the benchmark edit {meaning!r}: {anchor.strip()!r} or {before!r} "
                "is no longer in the default policy; update _CANDIDATE_EDITS"
            )
        text = text[:at] + after + text[at + len(before) :]
        applied.append(meaning)
    return text, applied


# --- synthetic referrals --------------------------------------------------------------------

_TRAFFICKING = (
    pb.INDICATOR_SEX_TRAFFICKING,
    pb.INDICATOR_LABOR_TRAFFICKING,
    pb.INDICATOR_CHILD_SEXUAL_EXPLOITATION,
    pb.INDICATOR_DOCUMENT_SERVITUDE,
    pb.INDICATOR_DEBT_BONDAGE,
    pb.INDICATOR_FORCED_LABOR_IN_US,
)
_STATES = (
    "CA", "TX", "FL", "NY", "GA", "IL", "NJ", "MD", "VA", "WA", "AZ", "NV", "NC", "OH", "MI",
    "PA", "LA", "TN", "CO", "MN", "MA", "OK", "PR", "GU", "HI", "AK",
)  # fmt: skip
_NATIONALITIES = ("US", "US", "US", "MX", "GT", "HN", "SV", "CN", "PH", "VN", "IN", "NG", "UA")
_AIRPORTS = (("ATL", "GA"), ("LAX", "CA"), ("JFK", "NY"), ("ORD", "IL"), ("MIA", "FL"))
_PORTS = (("2404", "TX"), ("2506", "CA"), ("0712", "NY"), ("2304", "TX"), ("5201", "FL"))
_PRODUCTS = (
    ("cotton work gloves", "6116.10", "CN"),
    ("frozen shrimp", "0306.17", "TH"),
    ("polysilicon", "2804.61", "CN"),
    ("cocoa beans", "1801.00", "CI"),
    ("seafood, canned tuna", "1604.14", "FJ"),
    ("palm oil", "1511.10", "MY"),
)
_NEEDS = (
    pb.SERVICE_NEED_SHELTER,
    pb.SERVICE_NEED_LEGAL,
    pb.SERVICE_NEED_MEDICAL,
    pb.SERVICE_NEED_MENTAL_HEALTH,
    pb.SERVICE_NEED_CASE_MANAGEMENT,
    pb.SERVICE_NEED_INTERPRETATION,
    pb.SERVICE_NEED_IMMIGRATION_RELIEF,
)
_SCOPES = (
    pb.CONSENT_SCOPE_LAW_ENFORCEMENT_CONTACT,
    pb.CONSENT_SCOPE_VICTIM_SERVICES_REFERRAL,
    pb.CONSENT_SCOPE_IMMIGRATION_RELIEF,
)


class ReferralGenerator:
    """Builds one synthetic referral at a time from a seeded random source."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.serial = 0

    # victims -----------------------------------------------------------------------------

    def consent(self, victim: pb.PotentialVictim, scope: int, received: datetime) -> None:
        rng = self.rng
        granted = received - timedelta(days=rng.randint(0, 400))
        roll = rng.random()
        if roll < 0.06:  # expired before the referral was received
            expires = received - timedelta(days=rng.randint(1, 30))
            granted = expires - timedelta(days=365)
        else:
            expires = granted + timedelta(days=rng.choice((180, 365, 730, 1825)))
        consent = victim.consents.add(scope=scope)
        consent.granted_at.FromDatetime(granted)
        consent.expires_at.FromDatetime(expires)
        if 0.06 <= roll < 0.11:  # withdrawn since
            consent.withdrawn_at.FromDatetime(granted + (received - granted) / 2)

    def victim(
        self,
        referral: pb.Referral,
        received: datetime,
        *,
        state: str | None,
        minor_rate: float = 0.12,
        consent_rate: float = 0.0,
        foreign_rate: float = 0.35,
    ) -> None:
        rng = self.rng
        index = len(referral.victims) + 1
        victim = referral.victims.add(victim_ref=f"v{index}")
        minor = rng.random() < minor_rate
        years = rng.randint(9, 17) if minor else rng.randint(18, 55)
        how = rng.random()
        if how < 0.45:
            victim.age = years
        elif how < 0.8:
            born = received.date() - timedelta(days=int(years * 365.25) + rng.randint(1, 300))
            victim.date_of_birth = born.isoformat()
            if rng.random() < 0.3:  # a stated age that disagrees with the document
                victim.age = max(0, years + rng.choice((-2, -1, 1, 2)))
        if rng.random() < 0.7:
            victim.full_name = f"Synthetic Person {self.serial:06d}-{index}"
        elif rng.random() < 0.6:
            victim.description = "unnamed person seen at the location"
        if rng.random() < 0.3:
            victim.phone = f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        if rng.random() < 0.15:
            victim.home_address.city = "Synthetic City"
            victim.home_address.us_state = state or "TX"
        if rng.random() < 0.2:
            victim.documents.add(kind=pb.IDENTITY_DOCUMENT_KIND_PASSPORT, number="X0000000")
        foreign = rng.random() < foreign_rate
        if rng.random() < 0.8:
            victim.nationality = (
                rng.choice(_NATIONALITIES[3:]) if foreign else rng.choice(_NATIONALITIES)
            )
        if state and rng.random() < 0.85:
            victim.us_state = state
        victim.needs.extend(rng.sample(_NEEDS, rng.randint(0, 3)))
        if rng.random() < consent_rate:
            for scope in _SCOPES:
                if rng.random() < 0.55:
                    self.consent(victim, scope, received)

    def group(self, referral: pb.Referral, low: int, high: int) -> None:
        index = len(referral.victims) + 1
        referral.victims.add(
            victim_ref=f"v{index}",
            count=self.rng.randint(low, high),
            description="group of workers described by the source",
        )

    # locations ---------------------------------------------------------------------------

    def us_address(self, referral: pb.Referral, state: str) -> None:
        location = referral.locations.add(kind=pb.LOCATION_KIND_US_ADDRESS, us_state=state)
        if self.rng.random() < 0.5:
            location.address.city = "Synthetic City"
            location.address.us_state = state

    # sources -----------------------------------------------------------------------------

    def tipline(self, referral: pb.Referral, received: datetime) -> None:
        rng = self.rng
        if rng.random() > 0.12:  # some tips carry only a narrative: R0, the CCHT desk triages
            pool = (*_TRAFFICKING, pb.INDICATOR_SMUGGLING)
            referral.indicators.extend(rng.sample(pool, rng.randint(1, 3)))
        state = rng.choice(_STATES) if rng.random() < 0.9 else None
        if state:
            self.us_address(referral, state)
        for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3, 4))):
            self.victim(referral, received, state=state, consent_rate=0.1)
        if rng.random() < 0.6:
            referral.reporter.name = "Synthetic Tipster"
        else:
            referral.reporter.anonymous = True
        for _ in range(rng.randint(0, 2)):
            referral.suspects.add(name="Synthetic Suspect", description="described by the tipster")

    def hotline(self, referral: pb.Referral, received: datetime) -> None:
        rng = self.rng
        referral.indicators.extend(rng.sample(_TRAFFICKING, rng.randint(1, 3)))
        state = rng.choice(_STATES) if rng.random() < 0.92 else None
        if state:
            self.us_address(referral, state)
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            self.victim(referral, received, state=state, consent_rate=0.85, foreign_rate=0.45)
        if rng.random() < 0.3:
            self.group(referral, 2, 25)

    def eallegations(self, referral: pb.Referral, _received: datetime) -> None:
        rng = self.rng
        referral.indicators.append(pb.INDICATOR_FORCED_LABOR_IN_GOODS)
        for _ in range(rng.randint(1, 3)):
            product, hts, country = rng.choice(_PRODUCTS)
            referral.goods.add(
                product=product,
                hts_code=hts,
                producer="Synthetic Producer Co",
                country_of_origin=country,
                importer="Synthetic Imports LLC",
                destined_for_us=rng.random() < 0.9,
                shipment_ids=[f"MEDU{rng.randint(1000000, 9999999)}"],
            )
        referral.locations.add(kind=pb.LOCATION_KIND_ABROAD)

    def screening(self, referral: pb.Referral, received: datetime) -> None:
        rng = self.rng
        if rng.random() < 0.6:
            referral.indicators.append(pb.INDICATOR_SMUGGLING)
        else:
            referral.indicators.extend(
                rng.sample((pb.INDICATOR_SEX_TRAFFICKING, pb.INDICATOR_LABOR_TRAFFICKING), 1)
            )
        if rng.random() < 0.6:
            code, state = rng.choice(_PORTS)
            referral.locations.add(
                kind=pb.LOCATION_KIND_PORT_OF_ENTRY, port_of_entry_code=code, us_state=state
            )
        else:
            code, state = rng.choice(_AIRPORTS)
            referral.locations.add(kind=pb.LOCATION_KIND_AIRPORT, airport_code=code, us_state=state)
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            self.victim(referral, received, state=state, foreign_rate=0.7)

    def adjudication(self, referral: pb.Referral, received: datetime) -> None:
        rng = self.rng
        pool = (
            pb.INDICATOR_LABOR_TRAFFICKING,
            pb.INDICATOR_SEX_TRAFFICKING,
            pb.INDICATOR_DOCUMENT_SERVITUDE,
        )
        referral.indicators.extend(rng.sample(pool, rng.randint(1, 2)))
        state = rng.choice(_STATES)
        self.us_address(referral, state)
        self.victim(referral, received, state=state, consent_rate=0.9, foreign_rate=0.95)

    def boarding(self, referral: pb.Referral, received: datetime) -> None:
        rng = self.rng
        referral.indicators.append(pb.INDICATOR_LABOR_TRAFFICKING)
        if rng.random() < 0.3:
            referral.indicators.append(pb.INDICATOR_DEBT_BONDAGE)
        location = referral.locations.add(kind=pb.LOCATION_KIND_AT_SEA)
        location.coordinates.latitude = rng.uniform(-10, 40)
        location.coordinates.longitude = rng.uniform(-160, -60)
        referral.vessel.name = "SYNTHETIC STAR"
        referral.vessel.imo_number = str(rng.randint(9000000, 9999999))
        referral.vessel.flag_state = rng.choice(("PA", "LR", "MH", "CN", "TW"))
        self.group(referral, 3, 40)
        if rng.random() < 0.25:
            self.victim(referral, received, state=None, minor_rate=0.4, foreign_rate=0.9)

    def airline(self, referral: pb.Referral, received: datetime) -> None:
        rng = self.rng
        referral.indicators.append(pb.INDICATOR_SEX_TRAFFICKING)
        if rng.random() < 0.2:
            referral.indicators.append(pb.INDICATOR_CHILD_SEXUAL_EXPLOITATION)
        referral.imminent_danger = rng.random() < 0.3
        code, state = rng.choice(_AIRPORTS)
        referral.locations.add(kind=pb.LOCATION_KIND_FLIGHT, flight_number="DL123")
        referral.locations.add(kind=pb.LOCATION_KIND_AIRPORT, airport_code=code, us_state=state)
        self.victim(referral, received, state=state, minor_rate=0.3, foreign_rate=0.3)
        referral.reporter.name = "Synthetic Crew Member"
        referral.reporter.role = "flight attendant"

    def referral(self) -> pb.Referral:
        """One more synthetic referral, as the intake would have published it."""
        rng = self.rng
        self.serial += 1
        builders: tuple[tuple[str, float, Callable[[pb.Referral, datetime], None]], ...] = (
            ("hsi-tipline", 0.28, self.tipline),
            ("nht-hotline", 0.25, self.hotline),
            ("cbp-eallegations", 0.08, self.eallegations),
            ("cbp-ofo-screening", 0.08, self.screening),
            ("tsa-screening", 0.03, self.screening),
            ("usss", 0.01, self.screening),
            ("fema", 0.01, self.screening),
            ("uscis-adjudication", 0.08, self.adjudication),
            ("uscg-boarding", 0.06, self.boarding),
            ("bli-airline", 0.12, self.airline),
        )
        source, _, build = rng.choices(builders, weights=[b[1] for b in builders])[0]
        received = REFERENCE_TIME - timedelta(seconds=rng.randint(0, 180 * 86400))
        referral = pb.Referral(
            referral_id=f"ref-{self.serial:08d}",
            source=source,
            source_reference=f"SYN-{self.serial:08d}",
            narrative="Synthetic narrative of what the source observed.",
        )
        referral.received_at.FromDatetime(received)
        build(referral, received)
        if not referral.imminent_danger:
            referral.imminent_danger = rng.random() < 0.05
        return referral


def synthetic_referrals(count: int, seed: int = DEFAULT_SEED) -> list[pb.Referral]:
    """``count`` synthetic referrals; the same ``seed`` always gives the same referrals."""
    generator = ReferralGenerator(seed)
    return [generator.referral() for _ in range(count)]


# --- the machine ----------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name, as the kernel reports it (falls back to the platform's words)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _pin_to_one_core() -> tuple[int | None, set[int] | None]:
    """Run on a single CPU while timing (Linux); returns the CPU and the affinity to restore."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    os.sched_setaffinity(0, {cpu})
    return cpu, allowed


# --- the benchmark --------------------------------------------------------------------------


def run_benchmark(
    count: int,
    *,
    seed: int,
    repeat: int,
    current: Policy,
    candidate: Policy,
) -> tuple[list[SimulationResult], int | None, bool]:
    """Time `simulate` over the synthetic referrals ``repeat`` times.

    Returns the results, the CPU the runs were pinned to, and whether the simulator's fast facts
    agreed with the router's adapter throughout (otherwise the adapter was timed).
    """
    referrals = [(referral, "") for referral in synthetic_referrals(count, seed)]
    simulators = [Simulator(current, candidate, default_now=REFERENCE_TIME) for _ in range(repeat)]
    gc.collect()
    cpu, restore = _pin_to_one_core()
    try:
        results = [simulate(referrals, simulator) for simulator in simulators]
    finally:
        if restore is not None:
            os.sched_setaffinity(0, restore)
    return results, cpu, not any(s.facts_disagreed for s in simulators)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.bench_policy",
        description="Referrals per second `refctl policy simulate` evaluates, on one core.",
    )
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="synthetic referrals")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--against", help="current policy (default: the shipped default)")
    parser.add_argument(
        "--policy", help="candidate policy (default: the shipped default with a few edits)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when below the target")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        parser.error("--count and --repeat must be at least 1")

    current_path = Path(args.against) if args.against else default_policy_path()
    try:
        current = load_policy(current_path)
        if args.policy:
            candidate = load_policy(args.policy)
            candidate_name = str(args.policy)
            edits: list[str] = []
        else:
            text, edits = candidate_policy_text(current_path.read_text(encoding="utf-8"))
            candidate = parse_policy(text, f"{current_path.name} + benchmark edits")
            candidate_name = f"{current_path.name} with: {'; '.join(edits)}"
    except (PolicyError, ValueError, OSError) as error:
        print(f"bench_policy: {error}", file=sys.stderr)
        return 1

    print(
        f"policy simulate benchmark: {args.count} synthetic referrals (seed {args.seed}), "
        f"{args.repeat} timed run{'s' if args.repeat > 1 else ''}",
        flush=True,
    )
    # Other work on the machine slows the runs down; the load says how busy it was.
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    results, cpu, facts_agreed = run_benchmark(
        args.count, seed=args.seed, repeat=args.repeat, current=current, candidate=candidate
    )
    # The verdict is on CPU time: the process runs on one core, so its CPU seconds are the core's
    # seconds of work, whatever else the machine is doing; elapsed time is shown alongside.
    rate = statistics.median(r.cpu_rate for r in results)
    wall_rate = statistics.median(r.rate for r in results)
    verdict = "PASS" if rate >= TARGET_PER_SECOND else "MISS"
    machine = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 0,
        "timed_on_cpu": cpu,
        "system": f"{platform.system()} {platform.release()}",
        "load_average_1min_at_start": load,
    }
    python = {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
    }
    protobuf = {"version": protobuf_version, "implementation": _protobuf_implementation()}

    target = f"{TARGET_PER_SECOND:,}/s"
    rows = [["run", "referrals", "seconds", "referrals/s", "wall s", "wall/s", "target", "result"]]
    for number, result in enumerate(results, start=1):
        rows.append(
            [
                str(number),
                str(result.evaluated),
                f"{result.cpu_seconds:.3f}",
                f"{result.cpu_rate:,.0f}",
                f"{result.seconds:.3f}",
                f"{result.rate:,.0f}",
                target,
                "PASS" if result.cpu_rate >= TARGET_PER_SECOND else "MISS",
            ]
        )
    rows.append(
        [
            "median",
            str(results[0].evaluated),
            f"{statistics.median(r.cpu_seconds for r in results):.3f}",
            f"{rate:,.0f}",
            f"{statistics.median(r.seconds for r in results):.3f}",
            f"{wall_rate:,.0f}",
            target,
            verdict,
        ]
    )
    pinned = f" (pinned to CPU {cpu})" if cpu is not None else ""
    print(
        f"machine:   {machine['cpu_model']}, {machine['cores']} cores, timed on 1 core{pinned}; "
        f"load average {load} at the start"
    )
    print(
        f"python:    {python['implementation']} {python['version']}; protobuf "
        f"{protobuf['version']} ({protobuf['implementation']})"
    )
    print(f"current:   {current_path.name} (version {current.version})")
    print(f"candidate: {candidate_name} (version {candidate.version})")
    print(
        f"differing: {results[0].differing} of {results[0].evaluated} referrals "
        f"({results[0].skipped} skipped)"
    )
    if not facts_agreed:
        print(
            "facts:     the fast facts extraction disagreed with referral.adapters.facts; the "
            "runs used the adapter (refctl/policy_cmd.py fast_facts needs updating)"
        )
    print()
    print(_table(rows))
    print("seconds: CPU time of this process on its one core; wall: elapsed time")

    report: dict[str, Any] = {
        "benchmark": "policy_simulate",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "referrals": args.count,
        "seed": args.seed,
        "runs": [
            {
                "cpu_seconds": r.cpu_seconds,
                "referrals_per_second": r.cpu_rate,
                "wall_seconds": r.seconds,
                "wall_referrals_per_second": r.rate,
            }
            for r in results
        ],
        "referrals_per_second": rate,
        "wall_referrals_per_second": wall_rate,
        "target_per_second": TARGET_PER_SECOND,
        "result": verdict,
        "differing": results[0].differing,
        "skipped": results[0].skipped,
        "fast_facts_agreed": facts_agreed,
        "policies": {
            "current": {"file": current_path.name, "version": current.version},
            "candidate": {"name": candidate_name, "version": candidate.version, "edits": edits},
        },
        "machine": machine,
        "python": python,
        "protobuf": protobuf,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"results:   {_shown_path(args.output)}")
    return 1 if args.strict and verdict == "MISS" else 0


def _protobuf_implementation() -> str:
    from google.protobuf.internal import api_implementation

    return str(api_implementation.Type())


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
