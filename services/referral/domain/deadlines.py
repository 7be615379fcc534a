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


class DeadlineSpecError(ValueError):
    """A deadline setting that cannot be understood; the message says how to write it."""


def parse_deadlines(spec: str) -> AcknowledgementDeadlines:
    """Deadlines from a setting like "URGENT=15m,HIGH=4h,ROUTINE=2bd" (m minutes, h hours,
    bd business days; ROUTINE is counted in business days only). Missing priorities keep
    their defaults."""
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, amount = part.partition("=")
        values[name.strip().upper()] = amount.strip().lower()
    unknown = set(values) - {"URGENT", "HIGH", "ROUTINE"}
    if unknown:
        raise DeadlineSpecError(
            f"unknown priority {sorted(unknown)[0]!r} in deadlines {spec!r}; "
            "use URGENT, HIGH and ROUTINE, e.g. URGENT=15m,HIGH=4h,ROUTINE=2bd"
        )
    defaults = AcknowledgementDeadlines()

    def duration(name: str, default: timedelta) -> timedelta:
        text = values.get(name)
        if text is None:
            return default
        number, unit = text[:-1], text[-1:]
        if unit not in {"m", "h"} or not number.isdigit() or int(number) == 0:
            raise DeadlineSpecError(
                f"{name}={text} is not a duration; write minutes or hours, e.g. {name}=15m"
            )
        return timedelta(minutes=int(number)) if unit == "m" else timedelta(hours=int(number))

    routine = values.get("ROUTINE")
    days = defaults.routine_business_days
    if routine is not None:
        if not routine.endswith("bd") or not routine[:-2].isdigit() or int(routine[:-2]) == 0:
            raise DeadlineSpecError(f"ROUTINE={routine} is not a count of business days, e.g. 2bd")
        days = int(routine[:-2])
    return AcknowledgementDeadlines(
        urgent=duration("URGENT", defaults.urgent),
        high=duration("HIGH", defaults.high),
        routine_business_days=days,
    )
