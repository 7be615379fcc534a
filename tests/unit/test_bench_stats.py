"""The pipeline benchmark's arithmetic: percentiles, ratios, verdicts, CPU and the report shape."""

from __future__ import annotations

import json
import math

import pytest

from devstack import bench_stats as stats

# A real `/proc/<pid>/stat` line shape; the command name has a space and a parenthesis in it.
STAT_LINE = (
    "4242 (python -m (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 3 0 "
    "100 200000 3000 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0"
)


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert stats.percentile(values, 0) == 1
    assert stats.percentile(values, 50) == pytest.approx(50.5)
    assert stats.percentile(values, 99) == pytest.approx(99.01)
    assert stats.percentile(values, 100) == 100
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2


def test_percentile_of_nothing_is_nan_and_out_of_range_is_an_error() -> None:
    assert math.isnan(stats.percentile([], 50))
    with pytest.raises(ValueError, match=r"0\.\.100"):
        stats.percentile([1.0], 101)


def test_a_record_that_never_arrived_makes_the_tail_infinite_not_nan() -> None:
    values = [*[10.0] * 99, math.inf]
    assert stats.percentile(values, 50) == 10
    assert stats.percentile(values, 99.9) == math.inf
    summary = stats.latency_summary(values)
    assert summary["never_arrived"] == 1
    assert summary["p99_9_ms"] == math.inf


def test_latency_summary() -> None:
    summary = stats.latency_summary([float(v) for v in range(1, 1001)])
    assert summary["count"] == 1000
    assert summary["never_arrived"] == 0
    assert summary["p50_ms"] == pytest.approx(500.5)
    assert summary["p99_ms"] == pytest.approx(990.01)
    assert summary["p99_9_ms"] == pytest.approx(999.001)
    assert summary["max_ms"] == 1000
    assert stats.latency_summary([]) == {"count": 0}


def test_cdf_points_are_monotonic_and_end_at_the_maximum() -> None:
    points = stats.cdf_points([float(v) for v in range(200, 0, -1)])
    assert points[0] == (0, 1.0)
    assert points[-1] == (100, 200.0)
    assert [ms for _, ms in points] == sorted(ms for _, ms in points)
    assert stats.cdf_points([]) == []


def test_ratios_follow_the_performance_note() -> None:
    ratios = stats.compute_ratios(
        referrals_per_second=500,
        records_per_referral=10,
        raw_records_per_second=8000,
        producer_performance_per_second=100_000,
        p99_ms_at_100=40,
        raw_hop_p99_ms=8,
        tracing_off_referrals_per_second=600,
    )
    assert ratios.pipeline_efficiency == pytest.approx(5000 / 8000)
    assert ratios.broker_headroom == pytest.approx(0.05)
    assert ratios.latency_p99_over_raw_hop_p99 == pytest.approx(5)
    assert ratios.tracing_on_over_off == pytest.approx(500 / 600)
    assert stats.verdicts(ratios, 40) == {
        "pipeline_efficiency": "PASS",
        "p99_at_100": "PASS",
        "tracing_cost": "PASS",
    }


def test_missing_or_unmeasured_figures_miss_their_targets() -> None:
    ratios = stats.compute_ratios(
        referrals_per_second=100,
        records_per_referral=10,
        raw_records_per_second=0,
        producer_performance_per_second=math.nan,
        p99_ms_at_100=math.inf,
        raw_hop_p99_ms=5,
        tracing_off_referrals_per_second=200,
    )
    assert math.isnan(ratios.pipeline_efficiency)
    assert math.isnan(ratios.broker_headroom)
    assert stats.verdicts(ratios, math.inf) == {
        "pipeline_efficiency": "MISS",
        "p99_at_100": "MISS",
        "tracing_cost": "MISS",
    }


def test_cpu_seconds_of_a_proc_stat_line() -> None:
    assert stats.cpu_seconds_of_stat(STAT_LINE, 100) == pytest.approx(3.25)


def test_cpu_seconds_per_referral_leaves_out_processes_read_only_once() -> None:
    per_referral = stats.cpu_seconds_per_referral(
        {"router": 1.0, "intake": 2.0, "gone": 1.0}, {"router": 3.0, "intake": 2.5}, 100
    )
    assert per_referral == pytest.approx({"router": 0.02, "intake": 0.005})


def test_producer_performance_summary_is_the_last_line() -> None:
    output = (
        "45011 records sent, 9002.2 records/sec (2.58 MB/sec), 520.1 ms avg latency, "
        "900.0 ms max latency.\n"
        "50000 records sent, 12355.1 records/sec (3.54 MB/sec), 1200.50 ms avg latency, "
        "2400.00 ms max latency, 1100 ms 50th, 2200 ms 95th, 2300 ms 99th, 2390 ms 99.9th.\n"
    )
    summary = stats.parse_producer_performance(output)
    assert summary["records"] == 50000
    assert summary["records_per_second"] == pytest.approx(12355.1)
    assert summary["avg_latency_ms"] == pytest.approx(1200.5)
    with pytest.raises(ValueError, match="summary"):
        stats.parse_producer_performance("no numbers here")


def test_report_shape_and_json_safety() -> None:
    report = dict.fromkeys(stats.REPORT_KEYS, 0.0) | {"ratios": {"x": math.nan, "y": [math.inf]}}
    stats.check_report_shape(report)
    safe = stats.json_safe(report)
    assert safe["ratios"] == {"x": None, "y": [None]}
    json.dumps(safe, allow_nan=False)
    with pytest.raises(ValueError, match="missing"):
        stats.check_report_shape({"benchmark": "pipeline"})
    with pytest.raises(ValueError, match="unexpected"):
        stats.check_report_shape(report | {"surprise": 1})


def test_table_aligns_columns_and_shows_unmeasured_as_a_dash() -> None:
    rows = [["measure", "value"], ["rate", stats.fmt(1234.5)], ["p99", stats.fmt(None)]]
    text = stats.table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("measure")
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].endswith("1,234")  # rounded half to even
    assert lines[3].endswith("-")
    assert len({len(line) for line in lines}) == 1
