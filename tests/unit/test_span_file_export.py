"""The span files `make run` and the tests read: one JSON line per span, laid out exactly as the
OpenTelemetry SDK's own ``to_json`` lays a span out (the exporter builds it without that cost)."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from plumbing.telemetry import JsonLinesSpanExporter


def test_each_line_is_the_sdk_layout_of_its_span(tmp_path: Path) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "referral-router"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("parent") as parent,
        tracer.start_as_current_span(
            "referrals.submitted process",
            kind=SpanKind.CONSUMER,
            attributes={"messaging.kafka.message.offset": 7, "ctroute.partners": ["hsi", "cbp"]},
            links=[Link(parent.get_span_context(), {"why": "test"})],
        ) as span,
    ):
        span.add_event("retried", {"attempt": 2})
        span.set_status(Status(StatusCode.ERROR, "ValueError"))
    spans = memory.get_finished_spans()
    exporter = JsonLinesSpanExporter(tmp_path / "referral-router.jsonl")

    exporter.export(spans)
    exporter.shutdown()

    lines = (tmp_path / "referral-router.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [json.loads(s.to_json()) for s in spans]
