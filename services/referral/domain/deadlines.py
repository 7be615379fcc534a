"""Acknowledgement deadlines (the SLA): URGENT 15 minutes, HIGH 4 hours, ROUTINE 2 business days.

Business days skip Saturdays and Sundays; federal holidays are not modelled yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class AcknowledgementDeadlines:
    """How long a partner has to acknowledge, per priority name; configurable."""

    urgent: timedelta = timedelta(minutes=15)
    high: timedelta = timedelta(hours=4)
    routine_business_days: int = 2

    def due(self, priority: str, delivered_at: datetime) -> datetime:
        """When a delivery of `priority` ("URGENT", "HIGH", "ROUTINE") must be acknowledged."""
        if priority == "URGENT":
            return delivered_at + self.urgent
        if priority == "HIGH":
            return delivered_at + self.high
        return add_business_days(delivered_at, self.routine_business_days)


def add_business_days(start: datetime, days: int) -> datetime:
    """`start` moved forward by `days` weekdays, keeping the time of day."""
    moment = start
    remaining = days
    while remaining > 0:
        moment += timedelta(days=1)
        if moment.weekday() < 5:
            remaining -= 1
    return moment
