"""Acknowledgement deadlines: the default SLA, business days, and the configuration setting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from referral.domain.deadlines import (
    AcknowledgementDeadlines,
    DeadlineSpecError,
    add_business_days,
    parse_deadlines,
)

FRIDAY_NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_the_default_sla() -> None:
    deadlines = AcknowledgementDeadlines()
    assert deadlines.due("URGENT", FRIDAY_NOON) == FRIDAY_NOON + timedelta(minutes=15)
    assert deadlines.due("HIGH", FRIDAY_NOON) == FRIDAY_NOON + timedelta(hours=4)
    assert deadlines.due("ROUTINE", FRIDAY_NOON) == datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_business_days_skip_the_weekend() -> None:
    assert add_business_days(FRIDAY_NOON, 1).weekday() == 0


def test_a_setting_overrides_some_priorities_and_keeps_the_rest() -> None:
    deadlines = parse_deadlines("URGENT=5m, routine=3bd")
    assert deadlines.urgent == timedelta(minutes=5)
    assert deadlines.high == timedelta(hours=4)
    assert deadlines.routine_business_days == 3
    assert parse_deadlines("") == AcknowledgementDeadlines()


@pytest.mark.parametrize("spec", ["ASAP=5m", "URGENT=5", "HIGH=0h", "ROUTINE=2d", "URGENT=m"])
def test_a_bad_setting_says_how_to_write_it(spec: str) -> None:
    with pytest.raises(DeadlineSpecError, match=r"e\.g\."):
        parse_deadlines(spec)
