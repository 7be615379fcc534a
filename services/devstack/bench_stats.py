"""The pure arithmetic of the pipeline benchmark: percentiles, ratios, verdicts, CPU and the table.

Kept apart from `devstack.bench` (which starts Kafka and the services) so it can be unit-tested
without a broker or a clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TARGET_EFFICIENCY = 0.5
"""Pipeline efficiency at least this (issue #7)."""
TARGET_P99_MS_AT_100 = 50.0
"""p99 latency at 100 referrals/s offered at most this many milliseconds."""
TARGET_TRACING_RATIO = 0.8
"""Throughput with tracing on divided by off at least this (tracing costs at most 20%)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high or math.isinf(ordered[high]):
        return ordered[high]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | int]:
    """Count, p50, p99, p99.9 and max of latencies in milliseconds (infinite: never arrived)."""
    if not values_ms:
        return {"count": 0}
    return {
        "count": len(values_ms),
        "never_arrived": sum(1 for value in values_ms if math.isinf(value)),
        "p50_ms": percentile(values_ms, 50),
        "p99_ms": percentile(values_ms, 99),
        "p99_9_ms": percentile(values_ms, 99.9),
        "max_ms": max(values_ms),
    }


CDF_QUANTILES: tuple[float, ...] = (*range(100), 99.5, 99.9, 100)
"""Where the latency distribution is sampled for the JSON and the plot."""


def cdf_points(values_ms: Sequence[float]) -> list[tuple[float, float]]:
    """(percentile, milliseconds) pairs of the distribution; empty when there are no values."""
    if not values_ms:
        return []
    ordered = sorted(values_ms)
    return [(q, percentile(ordered, q)) for q in CDF_QUANTILES]


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is zero."""
    if denominator == 0 or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


@dataclass(frozen=True)
class Ratios:
    pipeline_efficiency: float
    broker_headroom: float
    latency_p99_over_raw_hop_p99: float
    tracing_on_over_off: float


def compute_ratios(
    *,
    referrals_per_second: float,
    records_per_referral: float,
    raw_records_per_second: float,
    producer_performance_per_second: float,
    p99_ms_at_100: float,
    raw_hop_p99_ms: float,
    tracing_off_referrals_per_second: float,
) -> Ratios:
    """The ratios of performance.md: each one measured in the same run on the same broker."""
    kafka_records_per_second = referrals_per_second * records_per_referral
    return Ratios(
        pipeline_efficiency=ratio(kafka_records_per_second, raw_records_per_second),
        broker_headroom=ratio(kafka_records_per_second, producer_performance_per_second),
        latency_p99_over_raw_hop_p99=ratio(p99_ms_at_100, raw_hop_p99_ms),
        tracing_on_over_off=ratio(referrals_per_second, tracing_off_referrals_per_second),
    )


def verdicts(ratios: Ratios, p99_ms_at_100: float) -> dict[str, str]:
    """PASS or MISS for each target (MISS too when the figure could not be measured)."""

    def judge(ok: bool, value: float) -> str:
        return "PASS" if ok and not math.isnan(value) else "MISS"

    return {
        "pipeline_efficiency": judge(
            ratios.pipeline_efficiency >= TARGET_EFFICIENCY, ratios.pipeline_efficiency
        ),
        "p99_at_100": judge(p99_ms_at_100 <= TARGET_P99_MS_AT_100, p99_ms_at_100),
        "tracing_cost": judge(
            ratios.tracing_on_over_off >= TARGET_TRACING_RATIO, ratios.tracing_on_over_off
        ),
    }


def cpu_seconds_per_referral(
    before: Mapping[str, float], after: Mapping[str, float], referrals: int
) -> dict[str, float]:
    """Each process's CPU seconds spent between two readings, per referral (NaN for none)."""
    return {name: ratio(after[name] - before[name], referrals) for name in after if name in before}


def cpu_seconds_of_stat(stat_line: str, ticks_per_second: int) -> float:
    """utime + stime of one `/proc/<pid>/stat` line, in seconds.

    The command name (field 2) is in parentheses and may contain spaces, so fields are counted
    after its closing parenthesis: utime and stime are fields 14 and 15.
    """
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


_PERF_SUMMARY = re.compile(
    r"(?P<records>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mb>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency"
)


def parse_producer_performance(output: str) -> dict[str, float]:
    """The final summary of Kafka's ProducerPerformance (the last matching line of its output)."""
    matches = list(_PERF_SUMMARY.finditer(output))
    if not matches:
        raise ValueError("no ProducerPerformance summary line in its output")
    last = matches[-1]
    return {
        "records": float(last["records"]),
        "records_per_second": float(last["rate"]),
        "mb_per_second": float(last["mb"]),
        "avg_latency_ms": float(last["avg"]),
        "max_latency_ms": float(last["max"]),
    }


REPORT_KEYS = (
    "benchmark",
    "measured_at",
    "quick",
    "machine",
    "versions",
    "git_commit",
    "record_size_bytes",
    "saturation",
    "saturation_tracing_off",
    "latency",
    "baselines",
    "ratios",
    "targets",
    "cpu_seconds_per_referral",
    "idle_cpu_cores",
    "notes",
)
"""Top-level keys of `bench/results/pipeline.json`, in order."""


def check_report_shape(report: Mapping[str, Any]) -> None:
    """Raise ValueError when the report lacks a key or has an unexpected one."""
    missing = [key for key in REPORT_KEYS if key not in report]
    extra = [key for key in report if key not in REPORT_KEYS]
    if missing or extra:
        raise ValueError(f"report keys: missing {missing}, unexpected {extra}")


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def fmt(value: float | None, digits: int = 0) -> str:
    """A figure for the table: thousands separators, '-' when not measured or never reached."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned others; a dashed line under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
