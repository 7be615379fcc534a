"""The partner's inbox consumer and status reporter (see the package docstring)."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2
from plumbing import topics
from plumbing.envelope import EnvelopeError, decode_event, event_headers

log = logging.getLogger("ctroute_partner")

STATUS = lifecycle_pb2.DeliveryState
"""Delivery states a partner reports: STATUS.DELIVERY_STATE_ACKNOWLEDGED, ..._ACCEPTED, ..."""

DeliveryHandler = Callable[[delivery_pb2.PartnerDelivery], None]

_RETRY_DELAY_S = 1.0


@dataclass(frozen=True)
class PartnerSettings:
    """How a partner connects: its id and its Kafka credentials (from `refctl partner add`)."""

    partner: str
    bootstrap_servers: str
    username: str
    password: str = field(repr=False)
    security_protocol: str = "SASL_SSL"

    @classmethod
    def from_env(cls) -> PartnerSettings:
        """From CTROUTE_PARTNER_ID, KAFKA_BOOTSTRAP_SERVERS, CTROUTE_KAFKA_SECURITY_PROTOCOL,
        CTROUTE_KAFKA_SASL_USERNAME and CTROUTE_KAFKA_SASL_PASSWORD."""
        missing = [
            name
            for name in (
                "CTROUTE_PARTNER_ID",
                "KAFKA_BOOTSTRAP_SERVERS",
                "CTROUTE_KAFKA_SASL_USERNAME",
                "CTROUTE_KAFKA_SASL_PASSWORD",
            )
            if not os.environ.get(name)
        ]
        if missing:
            raise ValueError(f"set {', '.join(missing)}: `refctl partner add` printed them for you")
        return cls(
            partner=os.environ["CTROUTE_PARTNER_ID"],
            bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            username=os.environ["CTROUTE_KAFKA_SASL_USERNAME"],
            password=os.environ["CTROUTE_KAFKA_SASL_PASSWORD"],
            security_protocol=os.environ.get("CTROUTE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        )

    def client_config(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
        }


class SeenDeliveries:
    """Delivery ids already handled, in a SQLite file (":memory:" forgets on restart)."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (delivery_id TEXT PRIMARY KEY)")
        self._db.commit()

    def __contains__(self, delivery_id: object) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM seen WHERE delivery_id = ?", (str(delivery_id),)
        ).fetchone()
        return row is not None

    def add(self, delivery_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (delivery_id,))
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class PartnerInbox:
    """Consumes the partner's inbox in consumer group `partner.<id>.<group>`."""

    def __init__(
        self,
        settings: PartnerSettings,
        *,
        group: str = "main",
        seen_path: Path | str = ":memory:",
        **client_overrides: Any,
    ) -> None:
        self.settings = settings
        self.topic = topics.inbox(settings.partner)
        self.group_id = f"partner.{settings.partner}.{group}"
        self.seen = SeenDeliveries(seen_path)
        self._stop = threading.Event()
        config = {**settings.client_config(), **client_overrides}
        self._consumer = KafkaConsumer(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The router delivers in Kafka transactions: a batch it aborted (a crash, a broker
            # outage) is routed again, and only the committed copy may reach the partner.
            isolation_level="read_committed",
            **config,
        )
        self._consumer.subscribe([self.topic])
        self._producer = KafkaProducer(acks="all", **config)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def stop(self) -> None:
        """Make `run` return after the delivery in hand (safe from any thread)."""
        self._stop.set()

    def run(self, handle: DeliveryHandler) -> None:
        """Hand each new delivery to `handle` until `stop()`; see the package docstring."""
        while not self._stop.is_set():
            batches = self._consumer.poll(timeout_ms=500)
            for partition, records in batches.items():
                for record in records:
                    if self._stop.is_set() or not self._process(record, handle):
                        # Not handled: start again from this record (never skip past it).
                        self._consumer.seek(partition, record.offset)
                        break
                    self._commit(partition, record.offset + 1)

    def report(
        self,
        delivery: delivery_pb2.PartnerDelivery,
        state: lifecycle_pb2.DeliveryState.ValueType,
        *,
        decline_reason: int = 0,
        outcome: int = 0,
        timeout: float = 30.0,
    ) -> None:
        """Report a state of one of your deliveries on your status topic (waits for Kafka)."""
        if delivery.partner != self.settings.partner:
            raise ValueError(f"delivery {delivery.delivery_id} is not addressed to you")
        event = delivery_pb2.DeliveryStatusReported(referral_id=delivery.referral.referral_id)
        event.report.delivery_id = delivery.delivery_id
        event.report.partner = self.settings.partner
        event.report.state = state
        event.report.decline_reason = decline_reason  # type: ignore[assignment]
        event.report.outcome = outcome  # type: ignore[assignment]
        event.reported_at.FromDatetime(datetime.now(UTC))
        headers = event_headers(
            event,
            source=f"partner/{self.settings.partner}",
            event_id=f"{delivery.delivery_id}/status/{state}",
        )
        self._producer.send(
            topics.status(self.settings.partner),
            key=delivery.referral.referral_id.encode(),
            value=event.SerializeToString(),
            headers=headers,
        ).get(timeout=timeout)

    def close(self) -> None:
        self._consumer.close(autocommit=False)
        self._producer.close(timeout=10)
        self.seen.close()

    def _process(self, record: Any, handle: DeliveryHandler) -> bool:
        """True when the record is done with (handled, a duplicate, or not a delivery)."""
        delivery = self._verified(record)
        if delivery is None or delivery.delivery_id in self.seen:
            return True
        try:
            handle(delivery)
        except Exception as error:
            # The type only: a message could quote the delivery's content.
            log.warning(
                "handler failed on delivery %s (%s); it will be retried",
                delivery.delivery_id,
                type(error).__name__,
            )
            self._stop.wait(_RETRY_DELAY_S)
            return False
        self.seen.add(delivery.delivery_id)
        return True

    def _verified(self, record: Any) -> delivery_pb2.PartnerDelivery | None:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        try:
            _, event = decode_event(record.headers, record.value)
        except EnvelopeError as error:
            log.warning("skipping %s: %s", where, error)
            return None
        if not isinstance(event, delivery_pb2.PartnerDelivery):
            log.warning("skipping %s: a %s, not a delivery", where, event.DESCRIPTOR.name)
            return None
        if event.partner != self.settings.partner or record.topic != self.topic:
            log.warning("skipping %s: addressed to another partner", where)
            return None
        return event

    def _commit(self, partition: TopicPartition, offset: int) -> None:
        self._consumer.commit({partition: OffsetAndMetadata(offset, "", -1)})
