"""Chaos with exact accounting (issue 7).

While a steady stream of referrals flows over gRPC, the test crashes and restarts parts of the
system: it kills the router with SIGKILL three times at different moments (steady state, in
the middle of catching up, while it shares its group with a second instance), stops and
restarts the broker on the same data, kills enforcement, runs a second router instance to force
rebalances, and takes victim services offline for a long while. Afterwards it checks, from what
actually landed on the broker and what the partners stored:

* every accepted referral reached every expected partner exactly once: one delivery record per
  referral, partner and revision on the partner's inbox (read committed), one work item or case
  per delivery id in the partner's store; nothing else was delivered, and nothing on the delivery
  path (router, enforcement, victim services) was dead-lettered;
* every delivery was acknowledged on the partner's status topic and every consumer group
  committed up to the end of its topics (nothing is stuck);
* per referral and partner the inbox order held: the original before its amendments, and
  ``delivered_at`` never going backwards along the partition.

The expected recipients come from the pure policy engine, so the expectation is exact. Waits
are readiness checks against the broker (group membership, committed offsets) with generous
deadlines; nothing asserts on timing. The counts and recovery times are printed as a table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc, lifecycle_pb2, referral_pb2
from devstack.stack import SERVICES
from enforcement.domain.work_items import PARTNERS as ENFORCEMENT_PARTNERS
from plumbing import topics
from referral.adapters.facts import facts_from_referral
from referral.domain.policy import Policy
from referral.domain.routing import route_referral
from tests.chaos.conftest import ChaosSystem
from tests.kafka_reading import read_all

pytestmark = pytest.mark.chaos

ROUTER = "referral-router"
ROUTER_2 = "referral-router-2"
ENFORCEMENT = "enforcement"
VICTIM_SERVICES = "victim-services"

RATE_PER_SECOND = 12
"""New referrals the load generator submits per second (plus an amendment for every fifth).

Sized for headroom on a busy 2-core machine running the whole stack and the test: a recovering
consumer must process its backlog *and* the live stream, and CI time is bounded."""
AMEND_EVERY = 5
"""Every fifth accepted referral is amended once (same shape, new narrative)."""
OFFLINE_FOR = timedelta(seconds=25)
"""How long victim services stay offline while traffic for its partners piles up."""
DEADLINE = 180.0
"""Generous deadline for any recovery; a wait that exceeds it fails the test."""
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

T = TypeVar("T")


# --- the referrals the load generator submits ---------------------------------------------------


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _victim(
    referral: referral_pb2.Referral,
    now: datetime,
    *,
    age: int,
    state: str = "",
    nationality: str = "",
    consents: tuple[referral_pb2.ConsentScope.ValueType, ...] = (),
) -> None:
    victim = referral.victims.add(
        victim_ref="v1", age=age, us_state=state, nationality=nationality, full_name="Chaos Test"
    )
    for scope in consents:
        victim.consents.add(
            scope=scope,
            granted_at=_ts(now - timedelta(days=10)),
            expires_at=_ts(now + timedelta(days=80)),
        )


def _goods(referral: referral_pb2.Referral, now: datetime) -> None:
    referral.source = "cbp-eallegations"
    referral.indicators.append(referral_pb2.INDICATOR_FORCED_LABOR_IN_GOODS)
    referral.locations.add(kind=referral_pb2.LOCATION_KIND_ABROAD)
    referral.goods.add(product="gloves", country_of_origin="CN", destined_for_us=True)


def _adult_without_consent(referral: referral_pb2.Referral, now: datetime) -> None:
    referral.indicators.append(referral_pb2.INDICATOR_SEX_TRAFFICKING)
    _victim(referral, now, age=30)


def _at_sea_with_vessel(referral: referral_pb2.Referral, now: datetime) -> None:
    referral.source = "uscg-boarding"
    referral.indicators.append(referral_pb2.INDICATOR_LABOR_TRAFFICKING)
    _victim(referral, now, age=40, nationality="PH")
    at_sea = referral.locations.add(kind=referral_pb2.LOCATION_KIND_AT_SEA)
    at_sea.coordinates.latitude, at_sea.coordinates.longitude = 17.5, -64.9
    referral.vessel.name = "MV Chaos"
    referral.vessel.flag_state = "PA"


def _consenting_adult_in_texas(referral: referral_pb2.Referral, now: datetime) -> None:
    referral.indicators.append(referral_pb2.INDICATOR_LABOR_TRAFFICKING)
    _victim(
        referral,
        now,
        age=30,
        state="TX",
        consents=(referral_pb2.CONSENT_SCOPE_VICTIM_SERVICES_REFERRAL,),
    )


def _minor(referral: referral_pb2.Referral, now: datetime) -> None:
    referral.indicators.append(referral_pb2.INDICATOR_SEX_TRAFFICKING)
    _victim(referral, now, age=16)


def _immigration_relief(referral: referral_pb2.Referral, now: datetime) -> None:
    referral.indicators.append(referral_pb2.INDICATOR_LABOR_TRAFFICKING)
    _victim(
        referral,
        now,
        age=28,
        nationality="GT",
        state="TX",
        consents=(referral_pb2.CONSENT_SCOPE_IMMIGRATION_RELIEF,),
    )


def _no_rule(referral: referral_pb2.Referral, now: datetime) -> None:
    referral.source = "fema"
    referral.narrative = "nothing any rule claims"
    referral.locations.add(kind=referral_pb2.LOCATION_KIND_ABROAD)


SHAPES: dict[str, Callable[[referral_pb2.Referral, datetime], None]] = {
    "goods": _goods,  # cbp
    "adult-no-consent": _adult_without_consent,  # hsi, hsi-vap
    "at-sea-vessel": _at_sea_with_vessel,  # uscg, hsi, hsi-vap
    "ngo-consent": _consenting_adult_in_texas,  # hsi, hsi-vap, ngo-southwest
    "minor": _minor,  # hsi, hsi-vap, ccht
    "immigration": _immigration_relief,  # hsi, hsi-vap, uscis
    "no-rule": _no_rule,  # ccht
}


def build_referral(shape: str, reference: str, now: datetime) -> referral_pb2.Referral:
    referral = referral_pb2.Referral(source="hsi-tipline", source_reference=reference)
    referral.observed_at.CopyFrom(_ts(now - timedelta(hours=1)))
    SHAPES[shape](referral, now)
    if not referral.narrative:
        referral.narrative = f"chaos referral {reference}"
    return referral


def expected_recipients(
    referral: referral_pb2.Referral, referral_id: str, policy: Policy
) -> frozenset[str]:
    """Who the router must deliver to, from the pure policy engine (exact, not a guess)."""
    routed = referral_pb2.Referral()
    routed.CopyFrom(referral)
    routed.referral_id = referral_id
    return frozenset(
        route_referral(facts_from_referral(routed), policy, datetime.now(UTC)).recipients
    )


# --- the load generator -----------------------------------------------------------------------


@dataclass
class Accepted:
    """A referral the intake accepted, and what its partners must receive."""

    referral_id: str
    shape: str
    at: float
    """When the intake accepted it, in seconds since the load started."""
    recipients: frozenset[str]
    amendments: list[frozenset[str]] = field(default_factory=list)
    """Recipients of each accepted amendment, in the order they were accepted."""
    ambiguous_amend_attempts: int = 0
    """Amend attempts refused as UNAVAILABLE/DEADLINE_EXCEEDED: they may have landed anyway."""


class LoadGenerator:
    """Submits referrals at a steady rate over gRPC, retrying refusals like a careful client.

    A refused attempt (UNAVAILABLE or DEADLINE_EXCEEDED, e.g. while the broker restarts) is
    retried with backoff with the same request: the same source reference gives the same
    referral id, and the intake recognises a duplicate. Only referrals that got an id count as
    accepted. Submissions run on a worker pool so that one slow call does not stop the stream.
    """

    def __init__(self, grpc_address: str, policy: Policy, *, rate: float, tag: str) -> None:
        self._policy = policy
        self._interval = 1.0 / rate
        self._tag = tag
        self._channel = grpc.insecure_channel(grpc_address)
        self._stub = intake_pb2_grpc.ReferralIntakeServiceStub(self._channel)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="chaos-load")
        self._stop = threading.Event()
        self._give_up = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[Future[None]] = []
        self._thread = threading.Thread(target=self._pace, name="chaos-pacer", daemon=True)
        self.accepted: dict[str, Accepted] = {}
        self.attempts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.recognised_duplicates = 0
        self.abandoned = 0
        self.errors: list[str] = []
        self.scheduled = 0
        self.started = time.monotonic()

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def accepted_count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def refused_count(self) -> int:
        with self._lock:
            return sum(self.refused.values())

    def stop(self, drain_timeout: float = DEADLINE) -> None:
        """Stop scheduling; let in-flight submissions finish (retrying), then give up on them."""
        self._stop.set()
        self._thread.join(timeout=30)
        _, pending = wait_futures(list(self._futures), timeout=drain_timeout)
        if pending:
            self._give_up.set()
            wait_futures(pending, timeout=60)
        self._pool.shutdown(wait=True)
        self._channel.close()

    def _pace(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._futures.append(self._pool.submit(self._one, self.scheduled))
            self.scheduled += 1
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _call(self, kind: str, call: Callable[[], T]) -> tuple[T | None, int]:
        """The call's response (None if given up) and how many attempts were refused."""
        refused = 0
        backoff = 0.1
        while True:
            with self._lock:
                self.attempts[kind] += 1
            try:
                return call(), refused
            except grpc.RpcError as error:
                code = error.code()
                with self._lock:
                    self.refused[f"{kind} {code.name}"] += 1
                if code not in RETRYABLE:
                    raise
                refused += 1
                if self._give_up.is_set():
                    return None, refused
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _one(self, seq: int) -> None:
        try:
            self._submit(seq)
        except Exception as error:
            with self._lock:
                self.errors.append(f"referral #{seq}: {error!r}")

    def _submit(self, seq: int) -> None:
        shape = list(SHAPES)[seq % len(SHAPES)]
        now = datetime.now(UTC)
        referral = build_referral(shape, f"chaos-{self._tag}-{seq:06d}", now)
        request = intake_pb2.SubmitReferralRequest(referral=referral)
        response, _ = self._call("submit", lambda: self._stub.SubmitReferral(request, timeout=20))
        if response is None:
            with self._lock:
                self.abandoned += 1
            return
        referral_id = response.referral_id
        accepted = Accepted(
            referral_id,
            shape,
            time.monotonic() - self.started,
            expected_recipients(referral, referral_id, self._policy),
        )
        with self._lock:
            if response.duplicate:
                self.recognised_duplicates += 1
            self.accepted[referral_id] = accepted
        if seq % AMEND_EVERY:
            return
        amended = referral_pb2.Referral()
        amended.CopyFrom(referral)
        amended.narrative = f"amended chaos referral {seq}"
        amend = intake_pb2.AmendReferralRequest(
            referral_id=referral_id, referral=amended, reason="chaos test amendment"
        )
        amend_response, refused = self._call(
            "amend", lambda: self._stub.AmendReferral(amend, timeout=20)
        )
        with self._lock:
            accepted.ambiguous_amend_attempts += refused
            if amend_response is not None:
                accepted.amendments.append(expected_recipients(amended, referral_id, self._policy))
            else:
                self.abandoned += 1


# --- what the broker says about consumer groups ---------------------------------------------------


def _partitions(topic_names: list[str]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in topic_names for p in range(topics.PARTITIONS)]


@dataclass(frozen=True)
class GroupView:
    ends: dict[TopicPartition, int]
    committed: dict[TopicPartition, int]
    state: str
    members: dict[str, set[TopicPartition]]
    """Member id -> the partitions of the group's topics it actively consumes."""

    def owned_by(self, count: int | None = None, excluding: frozenset[str] = frozenset()) -> bool:
        """Stable, every partition owned, no member in `excluding`, `count` members if given."""
        owned = set().union(*self.members.values()) if self.members else set()
        return (
            self.state == "Stable"
            and bool(self.members)
            and all(self.members.values())
            and owned == set(self.ends)
            and not excluding & set(self.members)
            and (count is None or len(self.members) == count)
        )

    def describe(self) -> str:
        shares = sorted(len(partitions) for partitions in self.members.values())
        return f"{self.state}, {len(self.members)} member(s) owning {shares} of {len(self.ends)}"

    def behind(self, target: dict[TopicPartition, int] | None = None) -> dict[str, int]:
        goal = self.ends if target is None else target
        return {
            f"{tp.topic}[{tp.partition}]": end - self.committed.get(tp, 0)
            for tp, end in goal.items()
            if self.committed.get(tp, 0) < end
        }


class Probe:
    """Asks the broker about consumer groups, with clients kept between calls (cheap to poll)."""

    def __init__(self, bootstrap: str) -> None:
        self._settings: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "request_timeout_ms": 5000,
            "bootstrap_timeout_ms": 5000,
        }
        self._consumer: KafkaConsumer | None = None
        self._admin: KafkaAdminClient | None = None

    def _clients(self) -> tuple[KafkaConsumer, KafkaAdminClient]:
        if self._consumer is None:
            self._consumer = KafkaConsumer(group_id=None, **self._settings)
        if self._admin is None:
            self._admin = KafkaAdminClient(**self._settings)
        return self._consumer, self._admin

    def close(self) -> None:
        """Drop the clients (after an error, or at the end); the next call makes new ones."""
        for client in (self._consumer, self._admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._consumer = self._admin = None

    def view(self, group: str, topic_names: list[str]) -> GroupView | None:
        """End offsets, committed offsets and members; None while the broker does not answer."""
        partitions = _partitions(topic_names)
        wanted = set(partitions)
        try:
            consumer, admin = self._clients()
            ends = consumer.end_offsets(partitions)
            offsets = admin.list_group_offsets({group: None}).get(group, {})
            description = admin.describe_groups([group]).get(group) or {}
        except Exception:
            self.close()
            return None
        committed = {
            tp: meta.offset for tp, meta in offsets.items() if tp in wanted and meta.offset >= 0
        }
        members = {
            m["member_id"]: _active_partitions(m) & wanted for m in description.get("members", [])
        }
        return GroupView(ends, committed, str(description.get("group_state")), members)

    def subscribed_topics(self, group: str) -> list[str]:
        """The topics a (kafka-python) consumer group is assigned, once it is Stable."""
        try:
            _, admin = self._clients()
            description = admin.describe_groups([group]).get(group) or {}
        except Exception:
            self.close()
            return []
        if description.get("group_state") != "Stable":
            return []
        members = description.get("members", [])
        return sorted({tp.topic for member in members for tp in _active_partitions(member)})


def _active_partitions(member: dict[str, Any]) -> set[TopicPartition]:
    """The partitions a member is assigned."""
    assignment = member.get("member_assignment")
    if not isinstance(assignment, dict):
        return set()
    entries: list[tuple[str, list[int]]] = []
    for entry in assignment.get("assigned_partitions") or []:
        if isinstance(entry, dict):
            entries.append((entry["topic"], list(entry["partitions"])))
        else:
            entries.append((entry[0], list(entry[1])))
    return {TopicPartition(topic, n) for topic, numbers in entries for n in numbers}


def wait_for_topics(probe: Probe, group: str) -> list[str]:
    found: list[str] = []

    def check() -> str | None:
        found[:] = probe.subscribed_topics(group)
        return None if found else f"{group} has no assignment yet"

    wait_for(f"{group} reports its topics", check)
    return found


def wait_for(what: str, check: Callable[[], str | None], timeout: float = DEADLINE) -> float:
    """Poll `check` (None when satisfied, else why not) until it holds; return the seconds."""
    started = time.monotonic()
    why = "not checked yet"
    while True:
        result = check()
        if result is None:
            return time.monotonic() - started
        why = result
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not reached in {timeout:g}s ({why})")
        time.sleep(0.5)


# --- the chaos run --------------------------------------------------------------------------


@dataclass
class FaultRecord:
    fault: str
    detail: str
    at: float
    """When the fault began, in seconds since the load started."""
    recovery_seconds: float


@dataclass
class Chaos:
    system: ChaosSystem
    load: LoadGenerator
    probe: Probe
    groups: dict[str, list[str]]
    faults: list[FaultRecord] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.system.bootstrap_servers

    def say(self, message: str) -> None:
        self.system.say(f"chaos: {message}")

    def view(self, group: str) -> GroupView | None:
        return self.probe.view(group, self.groups[group])

    def _answer(self, group: str) -> GroupView:
        deadline = time.monotonic() + DEADLINE
        while (view := self.view(group)) is None:
            assert time.monotonic() < deadline, f"the broker did not answer about {group}"
            time.sleep(0.5)
        return view

    def snapshot_ends(self, group: str) -> dict[TopicPartition, int]:
        return dict(self._answer(group).ends)

    def member_ids(self, group: str) -> frozenset[str]:
        return frozenset(self._answer(group).members)

    def recovered(
        self,
        group: str,
        target: dict[TopicPartition, int],
        *,
        replacing: frozenset[str] = frozenset(),
        members: int | None = None,
    ) -> Callable[[], str | None]:
        """Live members (none of the `replacing` ones) own every partition and the group has
        committed up to `target`: everything produced before the fault is processed."""

        def check() -> str | None:
            view = self.view(group)
            if view is None:
                return "broker not answering"
            if not view.owned_by(members, replacing):
                return f"{group}: {view.describe()}"
            behind = view.behind(target)
            if not behind:
                return None
            # The committed offsets show where a partition stopped if it never catches up.
            committed = {f"{tp.topic}[{tp.partition}]": view.committed.get(tp, 0) for tp in target}
            return f"{group} behind {behind}; committed {committed}"

        return check

    def taken_over(
        self, group: str, *, replacing: frozenset[str] = frozenset(), members: int | None = None
    ) -> Callable[[], str | None]:
        """The partitions are owned by live members only (the rebalance is done)."""

        def check() -> str | None:
            view = self.view(group)
            if view is None:
                return "broker not answering"
            return None if view.owned_by(members, replacing) else f"{group}: {view.describe()}"

        return check

    def progressed(self, group: str) -> Callable[[], str | None]:
        """The group commits offsets beyond the ones it had when this was called."""
        since = dict(self._answer(group).committed)

        def check() -> str | None:
            view = self.view(group)
            if view is None:
                return "broker not answering"
            if any(offset > since.get(tp, 0) for tp, offset in view.committed.items()):
                return None
            return f"{group} has committed nothing new"

        return check

    def probe_behind(self, group: str) -> dict[str, int]:
        return self._answer(group).behind()

    def accepted_beyond(self, count: int) -> Callable[[], str | None]:
        def check() -> str | None:
            now = self.load.accepted_count()
            return None if now > count else f"accepted still {now}"

        return check

    def record(self, fault: str, detail: str, began: float, seconds: float | None = None) -> None:
        """A fault that began at `began` (monotonic) and took `seconds` (default: until now)."""
        took = time.monotonic() - began if seconds is None else seconds
        self.faults.append(FaultRecord(fault, detail, began - self.load.started, took))
        self.say(f"{fault}: {detail} — recovered in {took:.1f}s")

    def alive(self) -> dict[str, int | None]:
        return {name: service.process.poll() for name, service in self.system.stack.running.items()}


def wait_all(checks: dict[str, tuple[float, Callable[[], str | None]]]) -> dict[str, float]:
    """Poll several conditions together; return, for each, the seconds from its start time
    (a `time.monotonic()` value) to the moment it first held."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + DEADLINE
    why: dict[str, str] = {}
    while len(done) < len(checks):
        for name, (since, check) in checks.items():
            if name in done:
                continue
            result = check()
            if result is None:
                done[name] = time.monotonic() - since
            else:
                why[name] = result
        if len(done) == len(checks):
            break
        if time.monotonic() > deadline:
            pending = {name: why.get(name) for name in checks if name not in done}
            raise AssertionError(f"not reached in {DEADLINE:g}s: {pending}")
        time.sleep(0.5)
    return done


def _run_faults(chaos: Chaos) -> None:
    stack = chaos.system.stack
    router_spec = next(spec for spec in SERVICES if spec.name == ROUTER)

    # Warm up: traffic flows end to end before the first fault.
    wait_for("first referrals accepted", chaos.accepted_beyond(100))
    wait_for("router working", chaos.progressed(ROUTER))

    # (1) + (3) SIGKILL the router in steady state and, at the same moment, enforcement;
    # restart both at once. A killed member stays in its group until its session times out;
    # recovered = new members own every partition and have processed everything produced
    # before the restart.
    old_router = chaos.member_ids(ROUTER)
    old_enforcement = chaos.member_ids(ENFORCEMENT)
    killed_at = time.monotonic()
    stack.kill(ROUTER, signal.SIGKILL)
    stack.kill(ENFORCEMENT, signal.SIGKILL)
    stack.restart(ROUTER)
    stack.restart(ENFORCEMENT)
    enforcement_target = chaos.snapshot_ends(ENFORCEMENT)
    wait_for("a new router took over", chaos.taken_over(ROUTER, replacing=old_router))
    chaos.record("router kill -9 #1", "steady state; new instance assigned", killed_at)

    # SIGKILL the router again at once: the new instance has just been assigned and is catching
    # up the backlog of the first outage.
    old_router = chaos.member_ids(ROUTER)
    second_kill_at = time.monotonic()
    stack.kill(ROUTER, signal.SIGKILL)
    stack.restart(ROUTER)
    router_target = chaos.snapshot_ends(ROUTER)
    recovered = wait_all(
        {
            ROUTER: (
                second_kill_at,
                chaos.recovered(ROUTER, router_target, replacing=old_router),
            ),
            ENFORCEMENT: (
                killed_at,
                chaos.recovered(ENFORCEMENT, enforcement_target, replacing=old_enforcement),
            ),
        }
    )
    chaos.record(
        "router kill -9 #2", "mid catch-up after #1; caught up", second_kill_at, recovered[ROUTER]
    )
    chaos.record(
        "enforcement kill -9", "with router #1; caught up", killed_at, recovered[ENFORCEMENT]
    )

    # (2) Stop the broker, keep it down until clients notice (the intake has refused a
    # submission: its publish timed out), start it again on the same data. The services must
    # reconnect by themselves: nothing supervises them, so one that dies stays dead.
    accepted_before = chaos.load.accepted_count()
    refused_before = chaos.load.refused_count()
    began = time.monotonic()
    chaos.system.broker.stop()
    wait_for(
        "intake refusing while the broker is down",
        lambda: None if chaos.load.refused_count() > refused_before else "none refused yet",
    )
    down_for = time.monotonic() - began
    chaos.system.broker.start(timeout=DEADLINE)
    back_at = time.monotonic()
    checks = {
        group: (back_at, chaos.recovered(group, chaos.snapshot_ends(group)))
        for group in chaos.groups
    }
    checks["intake"] = (back_at, chaos.accepted_beyond(accepted_before))
    try:
        recovered = wait_all(checks)
    finally:
        dead = {name: code for name, code in chaos.alive().items() if code is not None}
        if dead:
            chaos.findings.append(f"services that exited after the broker restart: {dead}")
    assert not dead, f"services exited when the broker restarted: {dead}"
    slowest = max(recovered, key=lambda name: recovered[name])
    chaos.record(
        "broker stop+start",
        f"down {down_for:.0f}s + start {back_at - began - down_for:.0f}s; last: {slowest}",
        began,
        back_at - began + recovered[slowest],
    )

    # (5) Take victim services offline for a long while (deliveries for its partners pile up);
    # the second-router faults run meanwhile.
    stack.kill(VICTIM_SERVICES, signal.SIGTERM)
    offline_since = time.monotonic()

    # (4) A second router instance: the group rebalances to two members sharing the partitions.
    original = chaos.member_ids(ROUTER)
    began = time.monotonic()
    stack.start_service(dataclasses.replace(router_spec, name=ROUTER_2))
    wait_for("two routers sharing the work", chaos.taken_over(ROUTER, members=2))
    chaos.record("second router joins", "rebalanced to 2 active members", began)
    wait_for("the routers working", chaos.progressed(ROUTER))

    # (1) third SIGKILL: the original router while it shares the group; the second takes over.
    began = time.monotonic()
    stack.kill(ROUTER, signal.SIGKILL)
    target = chaos.snapshot_ends(ROUTER)
    wait_for("the second router took over", chaos.recovered(ROUTER, target, replacing=original))
    chaos.record("router kill -9 #3", "one of two instances; caught up", began)

    # Rebalance back: restart the original (two members), then stop the second cleanly.
    began = time.monotonic()
    second = chaos.member_ids(ROUTER)
    stack.restart(ROUTER)
    wait_for("two routers again", chaos.taken_over(ROUTER, members=2))
    stack.kill(ROUTER_2, signal.SIGTERM)
    target = chaos.snapshot_ends(ROUTER)
    wait_for("one router again", chaos.recovered(ROUTER, target, replacing=second, members=1))
    chaos.record("rebalance 1 -> 2 -> 1", "original back, second stopped", began)

    # (5) Bring victim services back after the long while; it must catch up its backlog.
    wait_for(
        "victim services offline long enough",
        lambda: (
            None
            if time.monotonic() - offline_since >= OFFLINE_FOR.total_seconds()
            else "still offline"
        ),
        timeout=OFFLINE_FOR.total_seconds() + 5,
    )
    backlog = sum(chaos.probe_behind(VICTIM_SERVICES).values())
    began = time.monotonic()
    stack.restart(VICTIM_SERVICES)
    target = chaos.snapshot_ends(VICTIM_SERVICES)
    wait_for("victim services caught up", chaos.recovered(VICTIM_SERVICES, target))
    chaos.record(
        "victim services offline",
        f"{began - offline_since:.0f}s offline, backlog {backlog} deliveries; caught up",
        offline_since,
        time.monotonic() - began,
    )


# --- accounting ---------------------------------------------------------------------------------


@dataclass
class Accounting:
    rows: list[tuple[str, object]] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)
    """What is wrong -> examples (every occurrence is counted, a few are quoted)."""

    def count(self, label: str, value: object) -> None:
        self.rows.append((label, value))

    def problem(self, what: str, example: str) -> None:
        self.problems.setdefault(what, []).append(example)

    def report(self) -> str:
        return "\n".join(
            f"{what}: {len(examples)}, e.g. {examples[:3]}"
            for what, examples in self.problems.items()
        )


def _partner_of_inbox(topic: str) -> str:
    return topic.split(".", 2)[1]


def _store_keys(path: Path, table: str) -> dict[str, tuple[str, str]]:
    """Delivery id -> (referral id, partner) of every work item or case a partner opened."""
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(f"SELECT key, record FROM {table}").fetchall()  # noqa: S608 - constant
    opened = {}
    for key, record in rows:
        data = json.loads(record)
        opened[key] = (data["referral_id"], data["partner"])
    return opened


def account(chaos: Chaos) -> Accounting:
    """Compare what landed on the broker and in the partners' stores with what was accepted."""
    system = chaos.system
    bootstrap = chaos.bootstrap
    partners = sorted(system.policy.partners)
    accepted = chaos.load.accepted
    result = Accounting()

    deliveries = read_all(bootstrap, [topics.inbox(p) for p in partners], timeout=DEADLINE)
    statuses = read_all(bootstrap, [topics.status(p) for p in partners], timeout=DEADLINE)
    dead_letters = read_all(bootstrap, [topics.DEAD_LETTER], timeout=DEADLINE)

    # Expected: (referral, partner) -> revisions it must receive (the original + amendments).
    expected: Counter[tuple[str, str]] = Counter()
    ambiguous: Counter[tuple[str, str]] = Counter()
    for item in accepted.values():
        for recipients in [item.recipients, *item.amendments]:
            for partner in recipients:
                expected[(item.referral_id, partner)] += 1
        for partner in item.recipients:
            ambiguous[(item.referral_id, partner)] += item.ambiguous_amend_attempts

    # Landed: distinct delivery ids per (referral, partner); raw copies per delivery id.
    distinct: dict[tuple[str, str], set[str]] = defaultdict(set)
    copies: Counter[str] = Counter()
    kind_of: dict[str, int] = {}
    pair_of: dict[str, tuple[str, str]] = {}
    by_topic_key: dict[tuple[str, str], list[delivery_pb2.PartnerDelivery]] = defaultdict(list)
    for record in deliveries:
        event = record.event
        if not isinstance(event, delivery_pb2.PartnerDelivery):
            result.problem("not a PartnerDelivery on an inbox", record.topic)
            continue
        partner = _partner_of_inbox(record.topic)
        pair = (event.referral.referral_id, partner)
        if event.partner != partner or record.key != pair[0]:
            result.problem("misaddressed delivery", f"{event.delivery_id} on {record.topic}")
        if pair[0] not in accepted:
            result.problem("delivery of a referral never accepted", event.delivery_id)
        elif pair not in expected:
            result.problem("delivery to a partner that should get nothing", f"{pair}")
        distinct[pair].add(event.delivery_id)
        copies[event.delivery_id] += 1
        kind_of[event.delivery_id] = event.kind
        pair_of[event.delivery_id] = pair
        by_topic_key[(record.topic, record.key)].append(event)

    # Not even a second copy on the wire: the router publishes each batch in a transaction,
    # so a batch it routes again after a crash replaces the aborted one for every reader of
    # committed records.
    for delivery_id, count in copies.items():
        if count > 1:
            result.problem("delivery record landed more than once", f"{delivery_id}: {count}")

    # Exactly once as the partner sees it: one distinct delivery id per revision. A retried
    # amendment the intake refused may still have landed (an amendment's revision is its event
    # id, so a retry is a new revision): those extra amendment deliveries are counted, not failed.
    ambiguous_extra = 0
    missing_at: Counter[int] = Counter()  # (referral, partner) pairs short, by accept time
    for pair, want in expected.items():
        ids = distinct.get(pair, set())
        originals = sum(1 for d in ids if kind_of[d] == delivery_pb2.DELIVERY_KIND_NEW)
        if originals != 1:
            result.problem("original delivered other than exactly once", f"{pair}: {originals}")
        if len(ids) < want:
            at = accepted[pair[0]].at
            result.problem("deliveries missing", f"{pair}: {len(ids)} of {want}, t+{at:.1f}s")
            missing_at[int(at // 5) * 5] += 1
        elif len(ids) > want + ambiguous[pair]:
            result.problem("deliveries too many", f"{pair}: {len(ids)} for {want}")
        else:
            ambiguous_extra += len(ids) - want

    # Order per referral and partner: one referral's records share a partition, and read_all
    # keeps each partition's records in offset order, so list order is offset order here. As
    # the partner sees it (first copy of each delivery id), the original comes before any
    # amendment; and delivered_at never goes backwards along the partition, copies included.
    for (topic, key), events in by_topic_key.items():
        seen: set[str] = set()
        amended = False
        last = (0, 0)
        for event in events:
            stamp = (event.delivered_at.seconds, event.delivered_at.nanos)
            if stamp < last:
                result.problem("delivered_at went backwards", f"{topic} {key}")
            last = max(last, stamp)
            if event.delivery_id in seen:
                continue
            seen.add(event.delivery_id)
            if event.kind == delivery_pb2.DELIVERY_KIND_AMENDMENT:
                amended = True
            elif amended:
                result.problem("original after its amendment", f"{topic} {key}")

    # Nothing stuck: every delivery acknowledged on its partner's status topic.
    acked: dict[str, set[str]] = defaultdict(set)
    raw_acks = 0
    for record in statuses:
        event = record.event
        if not isinstance(event, delivery_pb2.DeliveryStatusReported):
            continue  # other status events are not this test's business
        if event.report.state == lifecycle_pb2.DELIVERY_STATE_ACKNOWLEDGED:
            raw_acks += 1
            acked[event.report.delivery_id].add(topics.partner_of_status_topic(record.topic))
    for delivery_id, (_, partner) in pair_of.items():
        if partner not in acked.get(delivery_id, set()):
            result.problem("delivery never acknowledged", delivery_id)
    for delivery_id in acked.keys() - pair_of.keys():
        result.problem("acknowledgement of an unknown delivery", delivery_id)

    # As the partners see it: their work items and cases, keyed by delivery id.
    opened = _store_keys(system.data_dir / "enforcement.sqlite3", "work_items")
    opened |= _store_keys(system.data_dir / "victim-services.sqlite3", "cases")
    for delivery_id in pair_of.keys() - opened.keys():
        result.problem("delivery the partner did not open", delivery_id)
    for delivery_id in opened.keys() - pair_of.keys():
        result.problem("work item or case without a delivery", delivery_id)

    # Dead letters: the delivery path (router, enforcement, victim services) must park nothing;
    # other consumers' dead letters are reported.
    parked: Counter[str] = Counter()
    for record in dead_letters:
        group = record.headers.get("dlq_consumer_group", b"?").decode(errors="replace")
        parked[group] += 1
        if group in {ROUTER, ENFORCEMENT, VICTIM_SERVICES}:
            error = record.headers.get("dlq_error", b"").decode(errors="replace")
            result.problem(f"dead-lettered by {group}", error)
    if parked.keys() - {ROUTER, ENFORCEMENT, VICTIM_SERVICES}:
        chaos.findings.append(f"dead letters outside the delivery path: {dict(parked)}")

    if missing_at:
        chaos.findings.append(
            "pairs missing deliveries by the time their referral was accepted (5 s buckets): "
            + ", ".join(f"t+{t}s: {n}" for t, n in sorted(missing_at.items()))
        )
    load = chaos.load
    per_partner = Counter(partner for _, partner in pair_of.values())
    result.count("referrals accepted", len(accepted))
    result.count("amendments accepted", sum(len(a.amendments) for a in accepted.values()))
    result.count("intake attempts", dict(load.attempts))
    result.count("attempts refused (retried)", dict(load.refused) or 0)
    result.count("resubmissions recognised as duplicates", load.recognised_duplicates)
    result.count("never accepted (abandoned)", load.abandoned)
    result.count("deliveries expected (referral x partner x revision)", sum(expected.values()))
    result.count("distinct deliveries (delivery ids)", len(copies))
    result.count("raw delivery records", len(deliveries))
    result.count("raw duplicate delivery records", len(deliveries) - len(copies))
    result.count("extra amendment deliveries after refused retries", ambiguous_extra)
    result.count("work items + cases the partners opened", len(opened))
    result.count("acknowledged deliveries (distinct)", sum(1 for d in copies if d in acked))
    result.count("raw acknowledgement records", raw_acks)
    result.count("dead letters", dict(parked) or 0)
    result.count("distinct deliveries per partner", dict(sorted(per_partner.items())))
    return result


def _print_table(chaos: Chaos, accounting: Accounting, total: float) -> None:
    say = chaos.system.say
    crashes = _crashes(chaos.system.log_dir)
    if crashes:
        accounting.count("service crashes (uncaught, see logs)", crashes)
    rows = [("referrals scheduled", chaos.load.scheduled), *accounting.rows]
    width = max(len(label) for label, _ in rows)
    say("")
    say("=" * 30 + " chaos accounting " + "=" * 30)
    for label, value in rows:
        say(f"  {label:<{width}}  {value}")
    say("  recovery: seconds from the fault until live members own every partition and have")
    say("  processed everything produced before the restart (#1: until a new member is assigned)")
    for record in chaos.faults:
        say(
            f"    {record.fault:<24} at t+{record.at:5.1f}s {record.recovery_seconds:6.1f}s"
            f"  {record.detail}"
        )
    for finding in chaos.findings:
        say(f"  FINDING: {finding}")
    say(f"  chaos run (load + faults + drain + accounting): {total:.0f}s")
    say("=" * 78)


def _crashes(log_dir: Path) -> dict[str, int]:
    """Service log -> uncaught exceptions that ended the process (a traceback through runpy;
    tracebacks the Kafka clients log while reconnecting are not crashes)."""
    found: dict[str, int] = {}
    for path in sorted(log_dir.glob("*.log")):
        crashes = path.read_text(encoding="utf-8", errors="replace").count('File "<frozen runpy>"')
        if crashes:
            found[path.stem] = crashes
    return found


def _consumer_groups(system: ChaosSystem, probe: Probe) -> dict[str, list[str]]:
    """Every consumer group of the stack and the topics whose offsets it must commit."""
    groups = {
        ROUTER: [topics.SUBMITTED],
        ENFORCEMENT: [topics.inbox(p) for p in ENFORCEMENT_PARTNERS],
        VICTIM_SERVICES: [
            topics.inbox(p) for p in sorted(system.policy.partners) if p not in ENFORCEMENT_PARTNERS
        ],
    }
    # Any other consumer in the stack (e.g. the lifecycle tracker): its topics as it reports them.
    for spec in SERVICES:
        if spec.consumer_group and spec.consumer_group not in groups:
            groups[spec.consumer_group] = wait_for_topics(probe, spec.consumer_group)
    return groups


def test_every_accepted_referral_reaches_each_partner_exactly_once_through_chaos(
    chaos_system: ChaosSystem,
) -> None:
    started = time.monotonic()
    probe = Probe(chaos_system.bootstrap_servers)
    load = LoadGenerator(
        chaos_system.grpc_address,
        chaos_system.policy,
        rate=RATE_PER_SECOND,
        tag=f"{int(time.time())}",
    )
    chaos = Chaos(chaos_system, load, probe, _consumer_groups(chaos_system, probe))
    try:
        load.start()
        try:
            _run_faults(chaos)
        finally:
            load.stop()
        chaos.say(f"load stopped: {len(load.accepted)} accepted of {load.scheduled} scheduled")
        assert not load.errors, f"the intake answered with errors: {load.errors[:5]}"
        assert load.abandoned == 0, f"{load.abandoned} submissions were never accepted"

        # Nothing stuck: every group commits up to the end of its topics (outputs keep arriving
        # for a while after the load stops, so all must hold at once).
        def all_caught_up() -> str | None:
            for group in chaos.groups:
                view = chaos.view(group)
                if view is None:
                    return "broker not answering"
                if view.behind():
                    return f"{group} behind {view.behind()}"
            return None

        wait_for("every consumer group caught up", all_caught_up)
    except BaseException:
        _print_table(chaos, Accounting(), time.monotonic() - started)
        raise
    finally:
        probe.close()
    accounting = account(chaos)
    _print_table(chaos, accounting, time.monotonic() - started)
    assert not accounting.problems, accounting.report()
