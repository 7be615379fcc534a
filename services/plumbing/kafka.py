"""Publishing and consuming contract events on Kafka with kafka-python.

The publisher sets the CloudEvents headers and the trace context and waits for `acks=all` only
where the caller needs it. The consumer loop processes records in batches, opens a consumer span
that is a child of the producer's span, sends records it cannot decode or accept to the
dead-letter topic with their origin, and commits offsets only after the batch's own publishes
are acknowledged: a crash replays records (at least once) and never loses one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from plumbing import config, topics
from plumbing.envelope import (
    Envelope,
    EnvelopeError,
    Headers,
    decode_event,
    event_headers,
    header_value,
)
from plumbing.telemetry import extract_trace_context, inject_trace_context

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ctroute.plumbing.kafka")

MAX_HANDLER_ATTEMPTS = 3

REDRIVEN_ATTEMPTS_HEADER = "dlq_redriven_attempts"
"""Set by `refctl dlq redrive` on a republished record: the attempts spent before the redrive."""


class RejectedEvent(Exception):
    """Raised by a handler for an event that can never be processed; it goes to dead letters.

    The message must not contain personal data: it is stored in a header and shown to operators.
    """


SASL_MECHANISM = "SCRAM-SHA-512"


def security_settings() -> dict[str, Any]:
    """kafka-python settings for the broker's security, from the environment.

    Plaintext unless `CTROUTE_KAFKA_SECURITY_PROTOCOL` names a SASL protocol; then the process
    authenticates with SCRAM-SHA-512 as `CTROUTE_KAFKA_SASL_USERNAME`.
    """
    protocol = config.kafka_security_protocol()
    if protocol == "PLAINTEXT":
        return {}
    if protocol not in {"SASL_PLAINTEXT", "SASL_SSL"}:
        raise ValueError(
            f"CTROUTE_KAFKA_SECURITY_PROTOCOL={protocol} is not supported: "
            "use PLAINTEXT, SASL_PLAINTEXT or SASL_SSL"
        )
    username = config.kafka_sasl_username()
    if not username:
        raise ValueError(
            f"CTROUTE_KAFKA_SECURITY_PROTOCOL={protocol} needs CTROUTE_KAFKA_SASL_USERNAME "
            "and CTROUTE_KAFKA_SASL_PASSWORD"
        )
    return sasl_settings(username, config.kafka_sasl_password(), protocol=protocol)


def sasl_settings(
    username: str, password: str, *, protocol: str = "SASL_PLAINTEXT"
) -> dict[str, Any]:
    """kafka-python settings that authenticate as `username` with SCRAM-SHA-512."""
    return {
        "security_protocol": protocol,
        "sasl_mechanism": SASL_MECHANISM,
        "sasl_plain_username": username,
        "sasl_plain_password": password,
    }


def consumer_settings() -> dict[str, Any]:
    """kafka-python settings every consumer of this system uses: the broker's security, and
    committed records only (the router publishes in transactions: a batch it aborted, after a
    crash or a broker outage, must never reach anyone)."""
    return {"isolation_level": "read_committed", **security_settings()}


class EventPublisher:
    """Publishes contract events: protobuf value, referral id key, CloudEvents headers."""

    def __init__(self, bootstrap_servers: str, *, source: str, linger_ms: int = 5) -> None:
        self.source = source
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=source,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            compression_type=None,
            **security_settings(),
        )

    def publish(
        self,
        topic: str,
        key: str,
        event: Message,
        *,
        event_id: str | None = None,
        extra_headers: Headers | None = None,
    ) -> FutureRecordMetadata:
        """Send one event; the returned future resolves when the broker has it (acks=all)."""
        with tracer.start_as_current_span(
            f"{topic} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "publish",
                "messaging.destination.name": topic,
                "messaging.kafka.message.key": key,
                "cloudevents.event_type": event.DESCRIPTOR.full_name,
            },
        ):
            headers = event_headers(event, source=self.source, event_id=event_id)
            headers.extend(extra_headers or [])
            inject_trace_context(headers)
            return self._producer.send(
                topic, key=key.encode(), value=event.SerializeToString(), headers=headers
            )

    def publish_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        *,
        partition: int | None = None,
    ) -> FutureRecordMetadata:
        """Send a record as it is (dead letters keep the original bytes; the router sends the
        records it built and its changelog writes, which go to an explicit partition)."""
        return self._producer.send(
            topic, key=key, value=value, headers=headers, partition=partition
        )

    def flush(self, timeout: float | None = None) -> None:
        """Block until every sent record is acknowledged or failed.

        By default this waits out a broker outage instead of raising KafkaTimeoutError (which
        ended the consume loop, and with it the service, when the broker restarted). It cannot
        hang: the producer fails a record it could not deliver within its delivery timeout.
        """
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float = 10) -> None:
        self._producer.close(timeout=timeout)


@dataclass(frozen=True)
class ConsumedEvent:
    """One decoded record handed to a service's handler."""

    topic: str
    partition: int
    offset: int
    key: str
    envelope: Envelope
    event: Message
    headers: Sequence[tuple[str, bytes | None]]


Handler = Callable[[ConsumedEvent], None]


def dead_letter_headers(record: Any, *, error: str, group_id: str, attempts: int) -> Headers:
    """The original headers plus where the record came from and why it was rejected.

    `attempts` counts this consumer's tries. A record an operator redrove carries the tries spent
    before the redrive in `dlq_redriven_attempts`; they are added, so `dlq_attempts` is the
    record's total (garbage redriven once comes back with 2). A malformed count is taken as 0:
    dead-lettering must not fail because of a header.
    """
    headers: Headers = [(k, v) for k, v in (record.headers or []) if v is not None]
    earlier = header_value(headers, REDRIVEN_ATTEMPTS_HEADER) or ""
    # Only a short plain count is believed: a header is input like any other, and a huge
    # number would make formatting the sum fail and stop the consumer on every replay.
    if earlier.isascii() and earlier.isdigit() and len(earlier) <= 6:
        attempts += int(earlier)
    headers += [
        ("dlq_error", error.encode()),
        ("dlq_topic", record.topic.encode()),
        ("dlq_partition", str(record.partition).encode()),
        ("dlq_offset", str(record.offset).encode()),
        ("dlq_consumer_group", group_id.encode()),
        ("dlq_attempts", str(attempts).encode()),
        ("dlq_time", datetime.now(UTC).isoformat().encode()),
    ]
    return headers


def process_span_attributes(record: Any, group_id: str) -> dict[str, Any]:
    """The messaging attributes of a consumer's `<topic> process` span for one record."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.kafka.destination.partition": record.partition,
        "messaging.kafka.message.offset": record.offset,
        "messaging.consumer.group.name": group_id,
    }


def poll_riding_out_outages(
    consumer: KafkaConsumer, stop: threading.Event, timeout_ms: int = 200
) -> dict[Any, list[Any]]:
    """The next records; none while the broker or the group coordinator is unreachable.

    kafka-python's poll raises then, which ended the service on a broker restart. A poll that
    raises hands out no records, so polling again loses none.
    """
    try:
        batches: dict[Any, list[Any]] = consumer.poll(timeout_ms=timeout_ms)
    except KafkaError as error:
        if not error.retriable:
            raise
        log.warning("poll failed (%s); retrying", type(error).__name__)
        stop.wait(1.0)
        return {}
    return batches


def commit_riding_out_outages(consumer: KafkaConsumer, stop: threading.Event) -> None:
    """Commit the processed offsets, waiting out a broker or coordinator outage.

    A commit that fails must not end the service (it did, on a broker restart). Skipping one is
    safe: a later commit covers these offsets, or the records are replayed (at least once) after
    a rebalance or a stop.
    """
    delay = 0.2
    while True:
        try:
            consumer.commit()
            return
        except KafkaError as error:
            if not error.retriable or stop.is_set():
                log.warning("offsets not committed: %s", type(error).__name__)
                return
            log.warning("offset commit failed (%s); retrying", type(error).__name__)
            stop.wait(delay)
            delay = min(delay * 2, 5.0)


class EventConsumer:
    """A consume loop over contract events with dead-lettering and commit-after-publish."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        group_id: str,
        topic_names: Sequence[str] = (),
        topic_pattern: str | None = None,
        publisher: EventPublisher,
        client_id: str | None = None,
    ) -> None:
        self.group_id = group_id
        self._publisher = publisher
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=client_id or f"{group_id}-{config.instance_id()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=500,
            # A member killed without leaving the group hands its partitions over after 10 s
            # (kafka-python's default is 45 s of silence on those partitions).
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            **consumer_settings(),
        )
        if topic_pattern:
            self._consumer.subscribe(pattern=topic_pattern)
        else:
            self._consumer.subscribe(topics=list(topic_names))

    def run(
        self,
        handler: Handler,
        stop: threading.Event,
        *,
        between_polls: Callable[[], None] | None = None,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        """Process records until `stop` is set, then commit what was processed and close.

        `between_polls` runs after every poll, busy or idle: time-driven work (sweeps, deadlines)
        happens on the consumer's own thread, so it needs no locking against the handler.
        `after_batch` runs once the handler has seen every record of a batch and before its
        offsets are committed: a handler that only collects can write the batch at once there
        (if it raises, nothing of the batch is committed and the service stops).
        """
        try:
            while not stop.is_set():
                batches = poll_riding_out_outages(self._consumer, stop)
                if between_polls is not None:
                    between_polls()
                    self._publisher.flush()
                if not batches:
                    continue
                for records in batches.values():
                    for record in records:
                        self._process(record, handler)
                if after_batch is not None:
                    after_batch()
                self._publisher.flush()
                commit_riding_out_outages(self._consumer, stop)
        finally:
            self._consumer.close(autocommit=False)

    def _process(self, record: Any, handler: Handler) -> None:
        try:
            envelope, event = decode_event(record.headers, record.value)
        except EnvelopeError as error:
            self._dead_letter(record, f"undecodable record: {error}", attempts=1)
            return
        parent = extract_trace_context(record.headers)
        attempts = 0
        while True:
            attempts += 1
            with tracer.start_as_current_span(
                f"{record.topic} process",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    **process_span_attributes(record, self.group_id),
                    "cloudevents.event_id": envelope.event_id,
                    "cloudevents.event_type": envelope.event_type,
                },
            ) as span:
                try:
                    handler(
                        ConsumedEvent(
                            topic=record.topic,
                            partition=record.partition,
                            offset=record.offset,
                            key=(record.key or b"").decode("utf-8", errors="replace"),
                            envelope=envelope,
                            event=event,
                            headers=record.headers or [],
                        )
                    )
                    return
                except RejectedEvent as error:
                    span.set_attribute("ctroute.dead_lettered", True)
                    self._dead_letter(record, f"rejected: {error}", attempts=attempts)
                    return
                except Exception as error:
                    # Only the exception type is recorded: messages can quote personal data.
                    span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
                    if attempts >= MAX_HANDLER_ATTEMPTS:
                        log.error(
                            "giving up on %s[%d]@%d after %d attempts: %s",
                            record.topic,
                            record.partition,
                            record.offset,
                            attempts,
                            type(error).__name__,
                        )
                        self._dead_letter(
                            record, f"handler failed: {type(error).__name__}", attempts=attempts
                        )
                        return
                    time.sleep(0.1 * attempts)

    def _dead_letter(self, record: Any, error: str, *, attempts: int) -> None:
        log.warning(
            "dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, error
        )
        self._publisher.publish_raw(
            topics.DEAD_LETTER,
            record.key,
            record.value,
            dead_letter_headers(record, error=error, group_id=self.group_id, attempts=attempts),
        )
