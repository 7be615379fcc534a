"""Follows the lifecycle and partner status topics and narrates each referral as it travels:
its fan-out to partners, then each partner's acknowledgement. `make run` prints this.

Only ids, partners, rules and priorities are printed: nothing that identifies a person.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from kafka import KafkaConsumer, TopicPartition

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import lifecycle_pb2
from plumbing import topics
from plumbing.envelope import EnvelopeError, decode_event
from plumbing.kafka import consumer_settings


def _priority(value: lifecycle_pb2.Priority.ValueType) -> str:
    return lifecycle_pb2.Priority.Name(value).removeprefix("PRIORITY_")


class ReferralNarrator:
    """Turns lifecycle and status events into lines a person can follow."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.delivered_at: dict[str, datetime] = {}
        self.outstanding: dict[str, set[str]] = {}
        self.early_reports: dict[str, list[tuple[object, datetime]]] = {}
        self.changed = threading.Condition()

    def wait_until_acknowledged(self, referral_id: str, timeout: float) -> bool:
        """Block until the referral was routed and every partner acknowledged, or timeout."""
        with self.changed:
            return self.changed.wait_for(
                lambda: referral_id in self.outstanding and not self.outstanding[referral_id],
                timeout=timeout,
            )

    def on_event(self, event: object, time: datetime) -> None:
        with self.changed:
            self._narrate(event, time)
            self.changed.notify_all()

    def _narrate(self, event: object, time: datetime) -> None:
        if isinstance(event, lifecycle_pb2.ReferralRouted):
            decision = event.decision
            recipients = ", ".join(
                f"{p.partner} ({_priority(p.priority)}, {'+'.join(p.rule_ids)})"
                for p in decision.partners
            )
            self.emit(
                f"routed    {event.referral_id} from {event.source} -> {recipients}"
                f"  [policy {decision.policy_version}]"
            )
            self.outstanding[event.referral_id] = {p.delivery_id for p in decision.partners}
            for partner in decision.partners:
                self.delivered_at[partner.delivery_id] = time
                withheld = ",".join(partner.withheld_victim_refs)
                if withheld:
                    self.emit(
                        f"          {partner.partner}: identity of victim(s) {withheld} withheld"
                    )
            # Status topics and the lifecycle topic are read side by side, so an acknowledgement
            # can be read before its routing decision; it is told after the decision.
            for early, when in self.early_reports.pop(event.referral_id, []):
                self._narrate(early, when)
        elif isinstance(event, delivery_pb2.DeliveryStatusReported):
            report = event.report
            if report.delivery_id not in self.delivered_at:
                self.early_reports.setdefault(event.referral_id, []).append((event, time))
                return
            self.outstanding.get(event.referral_id, set()).discard(report.delivery_id)
            state = (
                lifecycle_pb2.DeliveryState.Name(report.state)
                .removeprefix("DELIVERY_STATE_")
                .lower()
            )
            since = self.delivered_at[report.delivery_id]
            # Record timestamps come from different processes' clocks: never show a negative gap.
            latency = max(0.0, (time - since).total_seconds() * 1000)
            self.emit(f"{state:<9} {event.referral_id} by {report.partner} after {latency:.0f} ms")


def follow(
    bootstrap_servers: str, emit: Callable[[str], None], stop: threading.Event
) -> ReferralNarrator:
    """Start a daemon thread that narrates events until `stop` is set; returns once it follows."""
    narrator = ReferralNarrator(emit)
    ready = threading.Event()

    def run() -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            **consumer_settings(),
        )
        followed = [
            name
            for name in consumer.topics()
            if name == topics.LIFECYCLE
            or (name.startswith("partner.") and name.endswith(".status"))
        ]
        partitions = [
            TopicPartition(name, p)
            for name in followed
            for p in consumer.partitions_for_topic(name)
        ]
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        ready.set()
        try:
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=300).values():
                    for record in records:
                        try:
                            _, event = decode_event(record.headers, record.value)
                        except EnvelopeError:
                            continue
                        when = datetime.fromtimestamp(record.timestamp / 1000, UTC)
                        narrator.on_event(event, when)
        finally:
            consumer.close()

    thread = threading.Thread(target=run, name="narrator", daemon=True)
    thread.start()
    ready.wait(timeout=30)
    return narrator
