"""The router as a faust-streaming agent: `python -m referral router`.

faust owns consumption, partition assignment and offset commits; the agent hands each record to
the ReferralRouter and waits until Kafka has acknowledged every record it produced before taking
the next one, so an offset is only committed after its outputs are safe (at least once; the
stable delivery ids make a replay recognisable). faust's exactly_once mode is not used: it has
open duplicate bugs, and idempotent outputs make it unnecessary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from plumbing import config, topics
from plumbing.runtime import configure_logging
from plumbing.telemetry import configure_tracing, extract_trace_context, shutdown_tracing
from referral.domain.policy import default_policy_path, load_policy
from referral.router import RawRecord, ReferralRouter

SERVICE_NAME = "referral-router"
log = logging.getLogger(__name__)
tracer = trace.get_tracer("ctroute.referral.router")


def _header_list(
    headers: Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None,
) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def build_app(bootstrap_servers: str, router: ReferralRouter) -> faust.App:
    """The faust app with the routing agent on the submitted topic."""
    app = faust.App(
        router.group_id,
        broker=",".join(f"kafka://{server}" for server in bootstrap_servers.split(",")),
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        store="memory://",
        broker_commit_interval=0.5,
    )
    submitted = app.topic(topics.SUBMITTED, key_type=bytes, value_type=bytes)
    outputs: dict[str, Any] = {}

    def output_topic(name: str) -> Any:
        if name not in outputs:
            outputs[name] = app.topic(name, key_type=bytes, value_type=bytes)
        return outputs[name]

    async def route_referrals(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            headers = _header_list(message.headers)
            record = RawRecord(
                message.topic, message.partition, message.offset, message.key, event.value, headers
            )
            with tracer.start_as_current_span(
                f"{topics.SUBMITTED} process",
                context=extract_trace_context(headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": message.topic,
                    "messaging.kafka.destination.partition": message.partition,
                    "messaging.kafka.message.offset": message.offset,
                    "messaging.consumer.group.name": router.group_id,
                },
            ):
                produced = router.handle(record)
            pending = [
                await output_topic(out.topic).send(
                    key=out.key.encode(), value=out.value, headers=out.headers, force=True
                )
                for out in produced
            ]
            await asyncio.gather(*pending)

    app.agent(submitted, name="route-referrals")(route_referrals)
    return app


def main() -> None:
    configure_logging(SERVICE_NAME)
    provider = configure_tracing(SERVICE_NAME)
    policy = load_policy(config.policy_path() or default_policy_path())
    log.info("router starting with policy version %s", policy.version)
    app = build_app(config.kafka_bootstrap_servers(), ReferralRouter(policy))
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, override_logging=False)
    try:
        worker.execute_from_commandline()
    finally:
        shutdown_tracing(provider)
