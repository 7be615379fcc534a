"""The pipeline benchmark's picture: throughput next to Kafka's, and the latency distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt


def plot(report: dict[str, Any], path: Path) -> None:
    """Write a two-panel PNG from a `pipeline.json` report."""
    figure, (bars, cdf) = plt.subplots(1, 2, figsize=(13, 5))
    saturation = report["saturation"]
    baselines = report["baselines"]
    records_per_referral = report["ratios"]["kafka_records_per_referral"] or 0
    labels = [
        "pipeline\nreferrals/s",
        "pipeline\nKafka records/s",
        "pipeline, tracing off\nKafka records/s",
        "kafka-python\nproduce+consume",
        "Kafka\nProducerPerformance",
    ]
    traced = saturation["referrals_per_second"] or 0
    untraced = report["saturation_tracing_off"]["referrals_per_second"] or 0
    values = [
        traced,
        traced * records_per_referral,
        untraced * records_per_referral,
        baselines["kafka_python_produce_consume"]["records_per_second"] or 0,
        baselines["producer_performance"]["records_per_second"] or 0,
    ]
    colours = ["tab:blue", "tab:blue", "tab:cyan", "tab:gray", "tab:gray"]
    drawn = bars.bar(range(len(values)), values, color=colours)
    bars.bar_label(drawn, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    bars.set_xticks(range(len(values)), labels, fontsize=8)
    bars.set_yscale("log")
    bars.set_ylabel("per second (log scale)")
    efficiency = report["ratios"]["pipeline_efficiency"]
    bars.set_title(
        "Throughput at saturation"
        + (f" (pipeline efficiency {efficiency:.2f})" if efficiency is not None else "")
    )

    curves = [
        (f"pipeline at {rate} offered", report["latency"][rate]["cdf_ms"])
        for rate in ("100/s", "500/s")
    ]
    curves.append(("raw Kafka hop at 100/s", baselines["raw_hop_latency"]["cdf_ms"]))
    for label, points in curves:
        # A referral that never arrived has no latency (null): the curve stops below 100.
        arrived = [(q, ms) for q, ms in points if ms is not None and ms > 0]
        if arrived:
            cdf.plot([ms for _, ms in arrived], [q for q, _ in arrived], label=label)
    cdf.axvline(50, color="tab:red", linestyle=":", label="target p99 at 100/s: 50 ms")
    cdf.axhline(99, color="lightgray", linewidth=0.8)
    cdf.set_xscale("log")
    cdf.set_xlabel("ms: pipeline accepted → partner record; raw hop send → receipt (log scale)")
    cdf.set_ylabel("percentile")
    cdf.set_title("Latency distribution")
    cdf.legend(fontsize=8, loc="lower right")
    machine = report["machine"]
    figure.suptitle(
        f"ctroute pipeline bench {report['measured_at']}: {machine['cpu_model']}, "
        f"{machine['cores']} cores{' (quick run)' if report['quick'] else ''}",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
