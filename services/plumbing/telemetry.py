"""Tracing setup and W3C trace-context propagation over Kafka record headers.

This module is the single owner of propagation over Kafka: the kafka-python auto-instrumentation
is not used, because it closes its receive span before the handler runs. Consumer spans are
children of the producer span (not links), so one referral is one trace from the gRPC call to
the last acknowledgement.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.util import ns_to_iso_str
from opentelemetry.trace import SpanContext, format_span_id, format_trace_id

from plumbing import config


class JsonLinesSpanExporter(SpanExporter):
    """Writes finished spans as JSON lines to a local file, so `make run` keeps its traces.

    One line per span, in the layout of the SDK's ``ReadableSpan.to_json`` (which the readers of
    these files know), built directly: ``to_json`` pretty-prints every span and its resource, and
    that formatting cost a visible share of each service's CPU under load.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._resources: dict[int, dict[str, Any]] = {}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(self._record(span), separators=(",", ":")) for span in spans]
        with self._lock:
            self._file.write("".join(line + "\n" for line in lines))
            self._file.flush()
        return SpanExportResult.SUCCESS

    def _record(self, span: ReadableSpan) -> dict[str, Any]:
        resource = self._resources.get(id(span.resource))
        if resource is None:
            resource = {
                "attributes": dict(span.resource.attributes),
                "schema_url": span.resource.schema_url,
            }
            self._resources[id(span.resource)] = resource
        status: dict[str, str] = {"status_code": span.status.status_code.name}
        if span.status.description:
            status["description"] = span.status.description
        return {
            "name": span.name,
            "context": _context_record(span.context),
            "kind": str(span.kind),
            "parent_id": f"0x{format_span_id(span.parent.span_id)}" if span.parent else None,
            "start_time": ns_to_iso_str(span.start_time) if span.start_time else None,
            "end_time": ns_to_iso_str(span.end_time) if span.end_time else None,
            "status": status,
            "attributes": dict(span.attributes or {}),
            "events": [
                {
                    "name": event.name,
                    "timestamp": ns_to_iso_str(event.timestamp),
                    "attributes": dict(event.attributes or {}),
                }
                for event in span.events
            ],
            "links": [
                {
                    "context": _context_record(link.context),
                    "attributes": dict(link.attributes or {}),
                }
                for link in span.links
            ],
            "resource": resource,
        }

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def _context_record(context: SpanContext | None) -> dict[str, str] | None:
    if context is None:
        return None
    return {
        "trace_id": f"0x{format_trace_id(context.trace_id)}",
        "span_id": f"0x{format_span_id(context.span_id)}",
        "trace_state": repr(context.trace_state),
    }


def configure_tracing(service_name: str) -> TracerProvider | None:
    """Install the global tracer provider for a service; None when tracing is switched off."""
    if not config.tracing_enabled():
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    endpoint = config.otlp_endpoint()
    exporter: SpanExporter
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    else:
        exporter = JsonLinesSpanExporter(config.trace_dir() / f"{service_name}.jsonl")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing(provider: TracerProvider | None) -> None:
    """Flush and close the exporters; spans of the last moments are not lost on Ctrl-C."""
    if provider is not None:
        provider.shutdown()


def inject_trace_context(headers: list[tuple[str, bytes]]) -> None:
    """Append the current W3C trace context (traceparent, tracestate) to Kafka headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if "traceparent" not in carrier:
        # No recording trace here (tracing switched off, or a caller outside any trace): start
        # an unsampled one, so every record still carries a trace id that hops can continue.
        carrier["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
    headers.extend((key, value.encode()) for key, value in carrier.items())


def restamp_trace_context(headers: list[tuple[str, bytes]]) -> None:
    """Replace the trace context in Kafka headers with the current one (in place)."""
    headers[:] = [(k, v) for k, v in headers if k not in ("traceparent", "tracestate")]
    inject_trace_context(headers)


def extract_trace_context(headers: Sequence[tuple[str, bytes | None]] | None) -> Context:
    """The trace context a producer left in Kafka headers (an empty context if none)."""
    carrier = {
        key: value.decode("ascii", errors="replace")
        for key, value in headers or ()
        if key in {"traceparent", "tracestate"} and value is not None
    }
    return propagate.extract(carrier)


def current_trace_id() -> str:
    """The hex trace id of the active span, or an empty string outside any trace."""
    context = trace.get_current_span().get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else ""


def trace_id_of_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> str:
    """The trace id carried by a record's traceparent header, or an empty string."""
    for key, value in headers or ():
        if key == "traceparent" and value:
            parts = value.decode("ascii", errors="replace").split("-")
            if len(parts) == 4:
                return parts[1]
    return ""
