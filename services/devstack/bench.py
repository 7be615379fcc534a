"""`make bench`: the whole pipeline on a real broker, next to what Kafka alone does on it.

One run starts a Kafka broker and every service process (the same `ServiceStack` `make run` and
the end-to-end tests use) and measures, on that one broker:

* **saturation**: submits kept in flight through the gRPC intake for a fixed time, with at most a
  bounded backlog of referrals accepted and not yet delivered (so the slowest stage is always
  busy but no queue grows without end); the end-to-end rate is the referrals that reached every
  partner their routing decision names, divided by the time from the first submit to the last
  partner record. It runs twice: on a stack with `CTROUTE_TRACING=off`, then with tracing on;
* **latency** at 100/s and 500/s offered open-loop (each submit starts on its schedule, whatever
  the previous ones are doing): from the moment the intake's SubmitReferral response arrives
  (accepted, acks=all) to the CreateTime of the last of the referral's partner records (the
  router's producer sets it when it sends); the time the bench's consumer saw it is kept too.
  A phase whose backlog passes `OPEN_LOOP_BACKLOG` stops early and says the rate was not
  sustained;
* **baselines**, after the stack has stopped: Kafka's own ProducerPerformance; kafka-python
  producing while a kafka-python consumer (another process) consumes, records of the pipeline's
  mean size, acks=all; one raw hop (kafka-python send → kafka-python consumer receipt) at 100/s;
* CPU seconds per referral of every process (utime + stime from `/proc/<pid>/stat`), and each
  process's CPU while idle.

The services are black boxes: the bench talks gRPC to the intake and reads records from
`referrals.lifecycle` (each `ReferralRouted` names the partners a referral goes to) and the
partner inboxes. Results go to `bench/results/pipeline.json` and `bench/results/pipeline.png`
(`.run/bench-quick/` for a quick run).

Run ``python -m devstack.bench [--quick]`` (`BENCH_QUICK=1` is the same as ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import grpc
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from ctroute.referral.v1 import intake_pb2, intake_pb2_grpc, lifecycle_pb2
from devstack import bench_stats as stats
from devstack.bench_policy import ReferralGenerator, cpu_model
from devstack.broker import (
    BrokerError,
    EmbeddedKafka,
    PrerequisiteMissing,
    find_project_root,
    free_port,
    free_port_pair,
    kafka_version,
    orphan_guard_prefix,
)
from devstack.stack import SERVICES, ServiceFailed, ServiceStack
from plumbing import topics
from plumbing.envelope import header_value
from referral.domain.policy import load_default_policy

RESULTS_DIR = Path("bench", "results")
"""Where a full run's results go (and are kept in git)."""
QUICK_RESULTS_DIR = Path(".run", "bench-quick")
"""Where a quick run's rough results go, so they never replace a full run's."""
RAW_TOPIC = "bench.raw"
HOP_TOPIC = "bench.hop"
PERF_TOPIC = "bench.perf"
ROUTED_TYPE = lifecycle_pb2.ReferralRouted.DESCRIPTOR.full_name
SEED = 7707
OPEN_LOOP_BACKLOG = 500
"""An open-loop phase stops submitting once this many referrals are accepted and undelivered:
far more than a system sustaining the rate holds, and a bound on the drain that follows."""


@dataclass(frozen=True)
class Sizes:
    """How long each phase runs; `--quick` is for development, not for figures."""

    warmup: int
    saturation_seconds: float
    concurrency: int
    backlog: int
    paced_seconds: float
    drain_timeout: float
    raw_records: int
    perf_records: int
    hop_seconds: float
    idle_seconds: float


FULL = Sizes(300, 40, 32, 400, 20, 60, 100_000, 300_000, 15, 10)
QUICK = Sizes(100, 10, 32, 200, 5, 30, 20_000, 50_000, 5, 3)


def say(message: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {message}", flush=True)


# --- referrals ----------------------------------------------------------------------------


class RequestSource:
    """Valid SubmitReferral requests shaped like the policy bench's referral mix, made on demand.

    The intake assigns the id and the received time, so both are cleared; the source reference
    carries the run tag so no request is a duplicate of an earlier run's.
    """

    def __init__(self, run_tag: str) -> None:
        self._generator = ReferralGenerator(SEED)
        self._run_tag = run_tag
        self._serial = 0

    def __iter__(self) -> Iterator[intake_pb2.SubmitReferralRequest]:
        return self

    def __next__(self) -> intake_pb2.SubmitReferralRequest:
        referral = self._generator.referral()
        referral.referral_id = ""
        referral.ClearField("received_at")
        referral.source_reference = f"BENCH-{self._run_tag}-{self._serial:07d}"
        self._serial += 1
        return intake_pb2.SubmitReferralRequest(referral=referral)


# --- observing deliveries (a separate process, so it does not share the client's GIL) ---------


def _observe(
    bootstrap: str,
    inboxes: list[str],
    ready: Any,
    stop: Any,
    accepted_ids: Any,
    completed: Synchronized[int],
    out: Any,
) -> None:
    """Follow the lifecycle topic and every inbox from their ends until told to stop.

    `completed` counts the referrals delivered to every partner among those the client reports
    accepted on `accepted_ids` (another phase's stragglers are not counted).

    Puts one dict on `out`: per referral id, the partners expected (-1 if no routing decision was
    seen), the partner topics delivered to, and the latest CreateTime and receipt time (seconds);
    and the number and bytes of all the records read (the baselines use their mean size).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    partitions = [
        TopicPartition(topic, number)
        for topic in [topics.LIFECYCLE, *inboxes]
        for number in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for partition in partitions:
        consumer.position(partition)
    ready.set()
    expected: dict[str, int] = {}
    delivered: dict[str, dict[str, tuple[float, float]]] = {}
    done: set[str] = set()
    ours: set[str] = set()
    record_bytes = 0
    record_count = 0

    def count(newly_ours: set[str]) -> None:
        if newly_ours:
            with completed.get_lock():
                completed.value += len(newly_ours)

    while not stop.is_set():
        batches = consumer.poll(timeout_ms=50)
        seen = time.time()
        arrived = set()
        with contextlib.suppress(queue.Empty):
            while True:
                arrived.add(accepted_ids.get_nowait())
        ours |= arrived
        count(arrived & done)
        for records in batches.values():
            for record in records:
                referral_id = (record.key or b"").decode()
                record_bytes += len(record.value or b"")
                record_count += 1
                if record.topic == topics.LIFECYCLE:
                    if header_value(record.headers, "ce_type") != ROUTED_TYPE:
                        continue
                    routed = lifecycle_pb2.ReferralRouted.FromString(record.value)
                    expected[referral_id] = len(routed.decision.partners)
                else:
                    delivered.setdefault(referral_id, {}).setdefault(
                        record.topic, (record.timestamp / 1000, seen)
                    )
                want = expected.get(referral_id)
                if (
                    want is not None
                    and referral_id not in done
                    and len(delivered.get(referral_id, ())) >= want
                ):
                    done.add(referral_id)
                    count({referral_id} & ours)
    consumer.close()
    out.put(
        {
            "referrals": {
                referral_id: (
                    expected.get(referral_id, -1),
                    len(deliveries),
                    max(created for created, _ in deliveries.values()),
                    max(seen for _, seen in deliveries.values()),
                )
                for referral_id, deliveries in delivered.items()
            }
            | {r: (n, 0, 0.0, 0.0) for r, n in expected.items() if r not in delivered},
            "records": record_count,
            "bytes": record_bytes,
        }
    )


class Observer:
    """The delivery observer process for one phase."""

    def __init__(self, context: SpawnContext, bootstrap: str, inboxes: list[str]) -> None:
        self._ready = context.Event()
        self._stop = context.Event()
        self._out: Any = context.Queue()
        self.accepted_ids: Any = context.Queue()
        self.completed: Synchronized[int] = context.Value("i", 0)
        self.process: SpawnProcess = context.Process(
            target=_observe,
            args=(
                bootstrap, inboxes, self._ready, self._stop, self.accepted_ids, self.completed,
                self._out,
            ),
            daemon=True,
        )

    def __enter__(self) -> Observer:
        self.process.start()
        if not self._ready.wait(60):
            raise RuntimeError("the delivery observer did not start within 60 s")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(10)

    def finish(self) -> dict[str, Any]:
        self._stop.set()
        result: dict[str, Any] = self._out.get(timeout=60)
        self.process.join(10)
        return result


# --- load ---------------------------------------------------------------------------------


@dataclass
class Submitted:
    """What the client saw: per referral id, when the submit started and when it was accepted."""

    sent: dict[str, float] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)
    started: int = 0
    errors: int = 0
    first_send: float = 0.0
    last_send: float = 0.0
    stopped_early: bool = False


async def _submit(
    stub: intake_pb2_grpc.ReferralIntakeServiceStub,
    request: intake_pb2.SubmitReferralRequest,
    result: Submitted,
    observer: Observer,
) -> None:
    result.started += 1
    started = time.time()
    try:
        response = await stub.SubmitReferral(request, timeout=30)
    except grpc.aio.AioRpcError:
        result.errors += 1
        return
    result.accepted[response.referral_id] = time.time()
    result.sent[response.referral_id] = started
    observer.accepted_ids.put(response.referral_id)


async def _closed_loop(
    address: str,
    requests: Iterator[intake_pb2.SubmitReferralRequest],
    *,
    concurrency: int,
    seconds: float,
    backlog: int,
    observer: Observer,
) -> Submitted:
    """`concurrency` submits in flight for `seconds`, never more than `backlog` referrals
    accepted and not yet delivered: the slowest stage stays busy without an unbounded queue."""
    result = Submitted()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = intake_pb2_grpc.ReferralIntakeServiceStub(channel)
        await channel.channel_ready()
        result.first_send = time.time()
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < deadline:
                if result.started - result.errors - observer.completed.value >= backlog:
                    await asyncio.sleep(0.005)
                    continue
                await _submit(stub, next(requests), result, observer)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.last_send = time.time()
    return result


async def _open_loop(
    address: str,
    requests: Iterator[intake_pb2.SubmitReferralRequest],
    *,
    rate: float,
    seconds: float,
    backlog: int,
    observer: Observer,
) -> Submitted:
    """Start a submit every 1/`rate` seconds on schedule, whatever earlier ones are doing.

    Stops early (and says so) when more than `backlog` referrals are submitted and not yet
    delivered: the system cannot sustain the rate, and waiting longer only grows the queue.
    """
    result = Submitted()
    tasks: list[asyncio.Task[None]] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = intake_pb2_grpc.ReferralIntakeServiceStub(channel)
        await channel.channel_ready()
        start = time.monotonic()
        result.first_send = time.time()
        for number in range(int(rate * seconds)):
            delay = start + number / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if result.started - result.errors - observer.completed.value > backlog:
                result.stopped_early = True
                break
            tasks.append(asyncio.create_task(_submit(stub, next(requests), result, observer)))
        result.last_send = time.time()
        await asyncio.gather(*tasks)
    return result


# --- CPU ----------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pids: dict[str, int]) -> dict[str, float]:
    """utime + stime in seconds of each named process (processes that are gone are left out)."""
    seconds = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
            seconds[name] = stats.cpu_seconds_of_stat(stat, _TICKS)
    return seconds


# --- phases -------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    offered: str
    submitted: Submitted
    completed: int
    not_routed: int
    partial: int
    seconds: float
    fan_out: float
    latency_ms: list[float]
    seen_latency_ms: list[float]
    cpu_seconds: dict[str, float]
    kafka_records: int

    @property
    def referrals_per_second(self) -> float:
        return stats.ratio(self.completed, self.seconds)

    def summary(self) -> dict[str, Any]:
        submitted = self.submitted
        send_seconds = submitted.last_send - submitted.first_send
        return {
            "offered": self.offered,
            "submitted": submitted.started,
            "submitted_per_second": stats.ratio(submitted.started, send_seconds),
            "stopped_early_backlog_growing": submitted.stopped_early,
            "accepted": len(submitted.accepted),
            "errors": submitted.errors,
            "delivered_to_every_partner": self.completed,
            "not_routed": self.not_routed,
            "partially_delivered": self.partial,
            "seconds": self.seconds,
            "referrals_per_second": self.referrals_per_second,
            "fan_out": self.fan_out,
            "kafka_records": self.kafka_records,
            "kafka_records_per_referral": stats.ratio(self.kafka_records, self.completed),
            "latency_to_partner_record_create_time": stats.latency_summary(self.latency_ms),
            "latency_to_bench_consumer_receipt": stats.latency_summary(self.seen_latency_ms),
            "cdf_ms": stats.cdf_points(self.latency_ms),
            "cpu_seconds": self.cpu_seconds,
        }


def _phase_result(
    name: str,
    offered: str,
    submitted: Submitted,
    seen: dict[str, Any],
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
    kafka_records: int,
) -> PhaseResult:
    """Match what the client had accepted with what reached the partners.

    A referral not delivered to every partner by the end of the drain counts with an infinite
    latency, so a percentile it reaches shows as not met rather than as a flattering figure.
    """
    latency: list[float] = []
    seen_latency: list[float] = []
    fan_out: list[int] = []
    not_routed = partial = 0
    last = submitted.first_send
    for referral_id, accepted in submitted.accepted.items():
        expected, delivered, created, received = seen["referrals"].get(
            referral_id, (-1, 0, 0.0, 0.0)
        )
        if expected < 0 or delivered < expected:
            not_routed += expected < 0
            partial += expected >= 0
            latency.append(math.inf)
            seen_latency.append(math.inf)
            continue
        latency.append((created - accepted) * 1000)
        seen_latency.append((received - accepted) * 1000)
        fan_out.append(expected)
        last = max(last, created)
    completed = len(fan_out)
    return PhaseResult(
        name=name,
        offered=offered,
        submitted=submitted,
        completed=completed,
        not_routed=not_routed,
        partial=partial,
        seconds=last - submitted.first_send,
        fan_out=stats.ratio(sum(fan_out), completed),
        latency_ms=latency,
        seen_latency_ms=seen_latency,
        cpu_seconds=stats.cpu_seconds_per_referral(cpu_before, cpu_after, completed),
        kafka_records=kafka_records,
    )


ROUTER_GROUP = next(s.consumer_group for s in SERVICES if s.name == "referral-router")


def router_lag(bootstrap: str) -> int:
    """Submitted records the router's consumer group has not committed yet."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        committed = admin.list_group_offsets({ROUTER_GROUP: None}).get(ROUTER_GROUP, {})
        partitions = [
            TopicPartition(topics.SUBMITTED, number)
            for number in consumer.partitions_for_topic(topics.SUBMITTED) or ()
        ]
        lag = 0
        for partition, end in consumer.end_offsets(partitions).items():
            done = committed.get(partition)
            lag += end - (done.offset if done is not None and done.offset >= 0 else 0)
        return lag
    finally:
        consumer.close()
        admin.close()


def total_records(bootstrap: str) -> int:
    """Records ever appended to the system's topics (the bench's own and Kafka's excluded)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        names = [t for t in consumer.topics() if not t.startswith(("__", "bench."))]
        partitions = [
            TopicPartition(name, number)
            for name in names
            for number in consumer.partitions_for_topic(name) or ()
        ]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


class Bench:
    """Everything one run needs: the broker, the stack of the moment, and the settings."""

    def __init__(self, root: Path, sizes: Sizes, run_dir: Path) -> None:
        self.root = root
        self.sizes = sizes
        self.run_dir = run_dir
        self.context = multiprocessing.get_context("spawn")
        self.broker = EmbeddedKafka(
            run_dir / "kafka", *free_port_pair(), project_root=root, progress=say
        )
        self.partners = sorted(load_default_policy().partners)
        self.inboxes = [topics.inbox(partner) for partner in self.partners]
        self.stack: ServiceStack | None = None
        self.record_bytes = 0
        self.record_count = 0

    def start_stack(self, name: str, extra_env: dict[str, str]) -> ServiceStack:
        base = self.run_dir / name
        self.stack = ServiceStack(
            bootstrap_servers=self.broker.bootstrap_servers,
            grpc_address=f"127.0.0.1:{free_port()}",
            data_dir=base / "data",
            trace_dir=base / "traces",
            log_dir=base / "logs",
            extra_env={"CTROUTE_LOG_LEVEL": "WARNING", **extra_env},
            progress=say,
        )
        self.stack.start(timeout=180)
        return self.stack

    def stop_stack(self) -> None:
        if self.stack is not None:
            self.stack.stop()
            self.stack = None

    def pids(self, observer: Observer | None = None) -> dict[str, int]:
        assert self.stack is not None
        pids = {name: s.process.pid for name, s in self.stack.running.items()}
        if self.broker.pid is not None:
            pids["kafka-broker"] = self.broker.pid
        pids["bench-client"] = os.getpid()
        if observer is not None and observer.process.pid is not None:
            pids["bench-observer"] = observer.process.pid
        return pids

    def idle_cpu(self, seconds: float) -> dict[str, float]:
        """Each process's CPU use with no referrals flowing, in cores (1.0 = one busy core):
        polling and heartbeats, which the CPU per referral at saturation includes too."""
        self._settle("idle")
        say(f"idle: measuring CPU for {seconds:g}s with nothing submitted")
        pids = self.pids()
        before = process_cpu(pids)
        time.sleep(seconds)
        after = process_cpu(pids)
        return {name: (after[name] - before[name]) / seconds for name in after if name in before}

    def phase(self, name: str, requests: Iterator[intake_pb2.SubmitReferralRequest], *,
              rate: float | None, seconds: float) -> PhaseResult:  # fmt: skip
        """Submit for `seconds` (closed loop, or open loop at `rate`), then wait for deliveries."""
        assert self.stack is not None
        sizes = self.sizes
        offered = f"{rate:g}/s open loop" if rate else f"{sizes.concurrency} in flight"
        self._settle(name)
        say(f"{name}: {seconds:g}s, {offered}")
        with Observer(self.context, self.broker.bootstrap_servers, self.inboxes) as observer:
            pids = self.pids(observer)
            records_before = total_records(self.broker.bootstrap_servers)
            cpu_before = process_cpu(pids)
            wall_before = time.monotonic()

            load = (
                _open_loop(self.stack.grpc_address, requests, rate=rate, seconds=seconds,
                           backlog=OPEN_LOOP_BACKLOG, observer=observer)
                if rate
                else _closed_loop(self.stack.grpc_address, requests,
                                  concurrency=sizes.concurrency, seconds=seconds,
                                  backlog=sizes.backlog, observer=observer)
            )  # fmt: skip
            submitted = self._run_with_progress(name, load, observer)
            self._drain(name, observer, len(submitted.accepted))
            cpu_after = process_cpu(pids)
            self._warn_if_bench_bound(name, cpu_before, cpu_after, time.monotonic() - wall_before)
            seen = observer.finish()
            records_after = total_records(self.broker.bootstrap_servers)
        self.record_bytes += seen["bytes"]
        self.record_count += seen["records"]
        return _phase_result(
            name, offered, submitted, seen, cpu_before, cpu_after, records_after - records_before
        )

    @staticmethod
    def _warn_if_bench_bound(
        name: str, before: dict[str, float], after: dict[str, float], seconds: float
    ) -> None:
        """The client and the observer are single Python processes too: say when one of them
        was nearly a whole core busy, because then the figures measure the bench."""
        for process in ("bench-client", "bench-observer"):
            if process in before and process in after:
                share = (after[process] - before[process]) / seconds
                if share > 0.8:
                    say(
                        f"{name}: warning: {process} used {share:.0%} of a core; the figures may "
                        "be bounded by the bench, not the system"
                    )

    def _settle(self, name: str) -> None:
        """Wait until the router has consumed everything submitted so far, so that a backlog
        an earlier phase left behind is not measured with this one."""
        deadline = time.monotonic() + self.sizes.drain_timeout
        while (lag := router_lag(self.broker.bootstrap_servers)) and time.monotonic() < deadline:
            say(f"{name}: waiting for the router to catch up ({lag} submitted records behind)")
            time.sleep(2)

    def _run_with_progress(self, name: str, load: Any, observer: Observer) -> Submitted:
        finished = threading.Event()

        def report() -> None:
            while not finished.wait(5):
                say(f"{name}: {observer.completed.value} referrals delivered so far")

        reporter = threading.Thread(target=report, daemon=True)
        reporter.start()
        try:
            submitted: Submitted = asyncio.run(load)
        finally:
            finished.set()
            reporter.join()
        say(
            f"{name}: {len(submitted.accepted)} accepted, {submitted.errors} errors in "
            f"{submitted.last_send - submitted.first_send:.1f}s"
            + (" (stopped early: the backlog kept growing)" if submitted.stopped_early else "")
        )
        return submitted

    def _drain(self, name: str, observer: Observer, accepted: int) -> None:
        deadline = time.monotonic() + self.sizes.drain_timeout
        last_report = time.monotonic()
        while observer.completed.value < accepted and time.monotonic() < deadline:
            time.sleep(0.1)
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                say(f"{name}: draining, {observer.completed.value}/{accepted} delivered")
        if observer.completed.value < accepted:
            say(f"{name}: {accepted - observer.completed.value} not delivered before the deadline")
        # Acknowledgements and lifecycle records that follow the deliveries, for the record count.
        time.sleep(2)

    # --- baselines ------------------------------------------------------------------------

    def producer_performance(self, record_size: int) -> dict[str, float]:
        say(f"baseline: Kafka ProducerPerformance, {self.sizes.perf_records} records")
        lib = self.root / "deploy" / "kafka" / "lib"
        command = [
            *orphan_guard_prefix(),
            shutil.which("java") or "java",
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.root / 'deploy' / 'kafka' / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.run_dir / 'perf-logs'}",
            "-cp",
            f"{lib}/*",
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic", PERF_TOPIC,
            "--num-records", str(self.sizes.perf_records),
            "--record-size", str(record_size),
            "--throughput", "-1",
            "--producer-props", f"bootstrap.servers={self.broker.bootstrap_servers}", "acks=all",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ProducerPerformance failed: {done.stderr[-2000:]}")
        return stats.parse_producer_performance(done.stdout)

    def raw_throughput(self, record_size: int) -> dict[str, float]:
        """kafka-python producing N records while a kafka-python consumer process reads them."""
        count = self.sizes.raw_records
        say(f"baseline: kafka-python produce + consume, {count} records of {record_size} B")
        result = self._raw(RAW_TOPIC, count, lambda producer: _produce_flat_out(
            producer, RAW_TOPIC, count, record_size
        ))  # fmt: skip
        seconds = result["last_seen"] - result["first_sent"]
        return {
            "records": result["count"],
            "seconds": seconds,
            "records_per_second": stats.ratio(result["count"], seconds),
            "produce_records_per_second": stats.ratio(count, result["produce_seconds"]),
        }

    def raw_hop(self, record_size: int) -> dict[str, Any]:
        """One hop at 100 records/s: kafka-python send (CreateTime) → consumer receipt."""
        count = int(100 * self.sizes.hop_seconds)
        say(f"baseline: raw Kafka hop latency, {count} records at 100/s")
        result = self._raw(HOP_TOPIC, count, lambda producer: _produce_paced(
            producer, HOP_TOPIC, count, record_size, 100
        ))  # fmt: skip
        latencies = result["latencies_ms"]
        return stats.latency_summary(latencies) | {
            "rate": 100,
            "cdf_ms": stats.cdf_points(latencies),
        }

    def _raw(
        self, topic: str, count: int, produce: Callable[[KafkaProducer], float]
    ) -> dict[str, Any]:
        ready = self.context.Event()
        out: Any = self.context.Queue()
        process = self.context.Process(
            target=_consume_raw,
            args=(self.broker.bootstrap_servers, topic, count, ready, out),
            daemon=True,
        )
        process.start()
        try:
            if not ready.wait(60):
                raise RuntimeError("the baseline consumer did not start within 60 s")
            producer = KafkaProducer(
                bootstrap_servers=self.broker.bootstrap_servers, acks="all", linger_ms=5
            )
            first_sent = time.time()
            produce_seconds = produce(producer)
            producer.close()
            result: dict[str, Any] = out.get(timeout=120)
        finally:
            if process.is_alive():
                process.terminate()
            process.join(10)
        return result | {"first_sent": first_sent, "produce_seconds": produce_seconds}


def _produce_flat_out(producer: KafkaProducer, topic: str, count: int, size: int) -> float:
    value = b"x" * size
    started = time.monotonic()
    for number in range(count):
        producer.send(topic, key=str(number % 1000).encode(), value=value)
    producer.flush()
    return time.monotonic() - started


def _produce_paced(producer: KafkaProducer, topic: str, count: int, size: int, rate: int) -> float:
    value = b"x" * size
    started = time.monotonic()
    for number in range(count):
        delay = started + number / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.send(topic, key=str(number).encode(), value=value)
    producer.flush()
    return time.monotonic() - started


def _consume_raw(bootstrap: str, topic: str, count: int, ready: Any, out: Any) -> None:
    """Read `count` records from the end of `topic`; report latencies and the last receipt."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    partitions = [TopicPartition(topic, n) for n in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for partition in partitions:
        consumer.position(partition)
    ready.set()
    latencies: list[float] = []
    last_seen = 0.0
    deadline = time.monotonic() + 180
    while len(latencies) < count and time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=100, max_records=5000)
        last_seen = time.time()
        for records in batches.values():
            latencies.extend(last_seen * 1000 - record.timestamp for record in records)
    consumer.close()
    out.put({"count": len(latencies), "last_seen": last_seen, "latencies_ms": latencies})


# --- the run ------------------------------------------------------------------------------


def machine_info(root: Path) -> tuple[dict[str, Any], dict[str, str], str]:
    """The machine, the versions of what ran, and the git commit measured."""
    memory = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    java = subprocess.run(
        ["java", "-version"], capture_output=True, text=True, check=False
    ).stderr.splitlines()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root, check=False
    ).stdout.strip()
    machine = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory": memory,
        "system": f"{platform.system()} {platform.release()}",
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    versions = {
        "python": platform.python_version(),
        "java": java[0] if java else "unknown",
        "kafka": kafka_version(root),
        "grpcio": grpc.__version__,
    }
    return machine, versions, commit or "unknown"


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM become KeyboardInterrupt here, so every `finally` runs."""
    previous = signal.signal(signal.SIGINT, _interrupt), signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def run(bench: Bench, quick: bool) -> dict[str, Any]:
    sizes = bench.sizes
    requests = RequestSource(datetime.now(UTC).strftime("%Y%m%d%H%M%S"))
    machine, versions, commit = machine_info(bench.root)

    bench.broker.start()
    bench.broker.create_topics(
        [(name, topics.PARTITIONS) for name in topics.all_topics(bench.partners)]
        + [(RAW_TOPIC, topics.PARTITIONS), (HOP_TOPIC, 1), (PERF_TOPIC, topics.PARTITIONS)]
    )
    # Tracing off first: the paced phases, which may leave a backlog, come last.
    warmup = sizes.warmup / 100
    bench.start_stack("tracing-off", {"CTROUTE_TRACING": "off"})
    bench.phase("warm-up (tracing off)", requests, rate=100, seconds=warmup)
    untraced = bench.phase(
        "saturation (tracing off)", requests, rate=None, seconds=sizes.saturation_seconds
    )
    bench.stop_stack()
    bench.start_stack("tracing-on", {})
    bench.phase("warm-up", requests, rate=100, seconds=warmup)
    idle = bench.idle_cpu(sizes.idle_seconds)
    saturation = bench.phase("saturation", requests, rate=None, seconds=sizes.saturation_seconds)
    at_100 = bench.phase("paced 100/s", requests, rate=100, seconds=sizes.paced_seconds)
    at_500 = bench.phase("paced 500/s", requests, rate=500, seconds=sizes.paced_seconds)
    bench.stop_stack()

    # The baselines move records of the pipeline's mean size, on the same broker, now idle.
    record_size = max(1, round(stats.ratio(bench.record_bytes, bench.record_count)))
    perf = bench.producer_performance(record_size)
    say(f"baseline: ProducerPerformance {perf['records_per_second']:,.0f} records/s")
    raw = bench.raw_throughput(record_size)
    say(f"baseline: kafka-python {raw['records_per_second']:,.0f} records/s produced and consumed")
    hop = bench.raw_hop(record_size)
    say(f"baseline: raw hop p50 {hop['p50_ms']:.1f} ms, p99 {hop['p99_ms']:.1f} ms")

    # Other work on the machine slows everything down; the load says how busy it was.
    machine["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    p99_at_100 = stats.percentile(at_100.latency_ms, 99)
    records_per_referral = stats.ratio(saturation.kafka_records, saturation.completed)
    ratios = stats.compute_ratios(
        referrals_per_second=saturation.referrals_per_second,
        records_per_referral=records_per_referral,
        raw_records_per_second=raw["records_per_second"],
        producer_performance_per_second=perf["records_per_second"],
        p99_ms_at_100=p99_at_100,
        raw_hop_p99_ms=float(hop.get("p99_ms", math.nan)),
        tracing_off_referrals_per_second=untraced.referrals_per_second,
    )
    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine,
        "versions": versions,
        "git_commit": commit,
        "record_size_bytes": record_size,
        "saturation": saturation.summary(),
        "saturation_tracing_off": untraced.summary(),
        "latency": {"100/s": at_100.summary(), "500/s": at_500.summary()},
        "baselines": {
            "producer_performance": perf,
            "kafka_python_produce_consume": raw,
            "raw_hop_latency": hop,
        },
        "ratios": {
            "pipeline_efficiency": ratios.pipeline_efficiency,
            "broker_headroom": ratios.broker_headroom,
            "latency_p99_over_raw_hop_p99": ratios.latency_p99_over_raw_hop_p99,
            "tracing_on_over_off": ratios.tracing_on_over_off,
            "kafka_records_per_referral": records_per_referral,
        },
        "targets": stats.verdicts(ratios, p99_at_100),
        "cpu_seconds_per_referral": {
            "saturation": saturation.cpu_seconds,
            "saturation_tracing_off": untraced.cpu_seconds,
            "paced_100": at_100.cpu_seconds,
            "paced_500": at_500.cpu_seconds,
        },
        "idle_cpu_cores": idle,
        "notes": NOTES,
    }
    stats.check_report_shape(report)
    safe: dict[str, Any] = stats.json_safe(report)
    return safe


NOTES = [
    "saturation: submits kept in flight for a fixed time with at most a bounded backlog of "
    "referrals accepted and not yet delivered; rate = referrals delivered to every partner of "
    "their routing decision / (last partner record CreateTime - first submit)",
    "latency: from the SubmitReferral response reaching the client (accepted, acks=all) to the "
    "CreateTime of the last of the referral's partner inbox records (set by the router's "
    "producer); a referral not delivered by the end of the drain counts as infinite (null)",
    "raw hop: kafka-python send (CreateTime) to kafka-python consumer receipt, 100 records/s",
    "kafka records per referral: records appended to every system topic during the saturation "
    "phase (submitted, inboxes, lifecycle, statuses, changelogs) / referrals delivered",
    "baseline record size: the mean value size of the lifecycle and inbox records the pipeline "
    "wrote during the run",
    "the bench client and its observer run on the same machine as the broker and the services; "
    "their CPU is listed with the others",
]


def render_table(report: dict[str, Any]) -> str:
    saturation = report["saturation"]
    untraced = report["saturation_tracing_off"]
    base = report["baselines"]
    ratios = report["ratios"]
    targets = report["targets"]

    def lat(summary: dict[str, Any], key: str) -> str:
        return stats.fmt(summary.get(key), 1)

    rows = [["measure", "value", "target", "result"]]
    rows.append([
        "end-to-end referrals/s at saturation (tracing on)",
        stats.fmt(saturation["referrals_per_second"]), "", "",
    ])  # fmt: skip
    rows.append([
        "  average fan-out (partner deliveries per referral)",
        stats.fmt(saturation["fan_out"], 2), "", "",
    ])  # fmt: skip
    rows.append([
        "  Kafka records per referral", stats.fmt(ratios["kafka_records_per_referral"], 2), "", "",
    ])  # fmt: skip
    rows.append(["end-to-end referrals/s, tracing off", stats.fmt(untraced["referrals_per_second"]),
                 "", ""])  # fmt: skip
    for rate in ("100/s", "500/s"):
        phase = report["latency"][rate]
        summary = phase["latency_to_partner_record_create_time"]
        missing = summary.get("never_arrived", 0)
        rows.append([
            f"latency at {rate} offered, p50 / p99 / p99.9 ms"
            + (" (rate not sustained)" if phase["stopped_early_backlog_growing"] else "")
            + (f" ({missing} never arrived)" if missing else ""),
            f"{lat(summary, 'p50_ms')} / {lat(summary, 'p99_ms')} / {lat(summary, 'p99_9_ms')}",
            "p99 <= 50" if rate == "100/s" else "",
            targets["p99_at_100"] if rate == "100/s" else "",
        ])  # fmt: skip
    hop = base["raw_hop_latency"]
    rows.append([
        "raw Kafka hop at 100/s, p50 / p99 ms", f"{lat(hop, 'p50_ms')} / {lat(hop, 'p99_ms')}",
        "", "",
    ])  # fmt: skip
    rows.append([
        "Kafka ProducerPerformance records/s",
        stats.fmt(base["producer_performance"]["records_per_second"]), "", "",
    ])  # fmt: skip
    rows.append([
        "kafka-python produce+consume records/s",
        stats.fmt(base["kafka_python_produce_consume"]["records_per_second"]), "", "",
    ])  # fmt: skip
    rows.append([
        "pipeline efficiency", stats.fmt(ratios["pipeline_efficiency"], 2), ">= 0.50",
        targets["pipeline_efficiency"],
    ])  # fmt: skip
    rows.append(["broker headroom (vs ProducerPerformance)",
                 stats.fmt(ratios["broker_headroom"], 3), "", ""])  # fmt: skip
    rows.append(["latency p99 at 100/s / raw hop p99",
                 stats.fmt(ratios["latency_p99_over_raw_hop_p99"], 1), "", ""])  # fmt: skip
    rows.append([
        "throughput tracing on / off", stats.fmt(ratios["tracing_on_over_off"], 2), ">= 0.80",
        targets["tracing_cost"],
    ])  # fmt: skip
    idle = report["idle_cpu_cores"]
    for name, seconds in sorted(report["cpu_seconds_per_referral"]["saturation"].items()):
        milliseconds = None if seconds is None else seconds * 1000
        idle_share = f" (idle: {idle[name] * 100:.0f}% of a core)" if name in idle else ""
        rows.append(
            [f"CPU ms per referral: {name}{idle_share}", stats.fmt(milliseconds, 2), "", ""]
        )
    return stats.table(rows)


def _shown(path: Path, root: Path) -> str:
    """`path` relative to the project when it is inside it."""
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.bench",
        description="End-to-end referrals/s and latency on a real broker, next to raw Kafka.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in {"", "0"},
        help="a short run for development (also BENCH_QUICK=1); its figures are rough",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help=f"default: {RESULTS_DIR}, or {QUICK_RESULTS_DIR} with --quick",
    )
    args = parser.parse_args(argv)
    root = find_project_root()
    output_dir: Path = args.output_dir or root / (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)
    run_dir = root / ".run" / "bench"
    shutil.rmtree(run_dir, ignore_errors=True)
    bench = Bench(root, QUICK if args.quick else FULL, run_dir)
    started = time.monotonic()
    try:
        with interruptible():
            try:
                report = run(bench, args.quick)
            finally:
                bench.stop_stack()
                bench.broker.stop()
    except KeyboardInterrupt:
        say("interrupted; everything the bench started is stopped")
        return 130
    except (PrerequisiteMissing, BrokerError, ServiceFailed, RuntimeError, queue.Empty) as error:
        print(f"bench: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "pipeline.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    from devstack.bench_plot import plot

    plot(report, output_dir / "pipeline.png")
    print()
    print(render_table(report))
    print()
    say(
        f"done in {time.monotonic() - started:.0f}s; results in {_shown(json_path, root)} and "
        f"{_shown(output_dir / 'pipeline.png', root)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
