"""Victim services' consent records and what it reports for each delivery (pure domain), and
the `refctl consent` command line."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from refctl.__main__ import build_parser
from refctl.consent_cmd import parse_time
from victim_services.domain.cases import DeliveryView, known_victims, open_case, states_to_report
from victim_services.domain.consent import (
    ConsentGrant,
    ConsentRecord,
    ConsentRefused,
    ConsentScope,
    ConsentStatus,
    after_grant,
    after_withdrawal,
    grant_consent,
    withdraw_consent,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
IR = ConsentScope.IMMIGRATION_RELIEF
KNOWN = frozenset({"v1"})


def _grant(
    *,
    victim_ref: str = "v1",
    expires_at: datetime = NOW + 90 * DAY,
    granted_at: datetime | None = None,
    now: datetime = NOW,
) -> ConsentGrant:
    return grant_consent(
        referral_id="r1",
        victim_ref=victim_ref,
        scope=IR,
        expires_at=expires_at,
        granted_at=granted_at,
        known_victims=KNOWN,
        now=now,
    )


def test_a_grant_defaults_to_now_and_has_a_stable_event_id() -> None:
    grant = _grant()
    assert grant.granted_at == NOW
    assert grant.event_id == _grant().event_id
    assert grant.event_id != _grant(granted_at=NOW - DAY).event_id


@pytest.mark.parametrize(
    ("overrides", "unknown"),
    [
        ({"victim_ref": "v9"}, True),
        ({"expires_at": NOW - DAY, "granted_at": NOW - 2 * DAY}, False),
        ({"expires_at": NOW - DAY}, False),
        ({"granted_at": NOW + DAY}, False),
    ],
    ids=["unknown victim", "lapsed", "expires before granted", "granted in the future"],
)
def test_a_grant_that_cannot_be_recorded_is_refused(
    overrides: dict[str, Any], unknown: bool
) -> None:
    with pytest.raises(ConsentRefused) as refused:
        _grant(**overrides)
    assert refused.value.unknown_victim is unknown


def test_a_withdrawal_needs_no_prior_grant_but_a_known_victim() -> None:
    withdrawal = withdraw_consent(
        referral_id="r1", victim_ref="v1", scope=IR, withdrawn_at=None, known_victims=KNOWN, now=NOW
    )
    assert withdrawal.withdrawn_at == NOW
    with pytest.raises(ConsentRefused):
        withdraw_consent(
            referral_id="r1",
            victim_ref="v2",
            scope=IR,
            withdrawn_at=None,
            known_victims=KNOWN,
            now=NOW,
        )


def test_the_record_follows_the_victims_latest_word() -> None:
    grant = _grant()
    record = after_grant(None, grant)
    assert record.status(NOW) is ConsentStatus.IN_FORCE
    assert record.status(NOW + 91 * DAY) is ConsentStatus.EXPIRED
    withdrawal = withdraw_consent(
        referral_id="r1",
        victim_ref="v1",
        scope=IR,
        withdrawn_at=NOW + DAY,
        known_victims=KNOWN,
        now=NOW + DAY,
    )
    withdrawn = after_withdrawal(record, withdrawal)
    assert withdrawn.status(NOW + 2 * DAY) is ConsentStatus.WITHDRAWN
    assert ConsentRecord.from_record(withdrawn.as_record()) == withdrawn
    # A grant dated before the withdrawal does not undo it; a later one does.
    assert after_grant(withdrawn, _grant(granted_at=NOW)) == withdrawn
    renewed = after_grant(withdrawn, _grant(granted_at=NOW + 2 * DAY, now=NOW + 2 * DAY))
    assert renewed.status(NOW + 3 * DAY) is ConsentStatus.IN_FORCE


def _view(partner: str, kind: str) -> DeliveryView:
    return DeliveryView("d1", "r1", partner, "HIGH", 1, 1, kind, ("v1",))


def test_the_victim_assistance_program_accepts_content_at_once_others_acknowledge() -> None:
    assert states_to_report(_view("hsi-vap", "NEW")) == ("ACKNOWLEDGED", "ACCEPTED")
    assert states_to_report(_view("hsi-vap", "AMENDMENT")) == ("ACKNOWLEDGED", "ACCEPTED")
    assert states_to_report(_view("hsi-vap", "WITHDRAWAL")) == ("ACKNOWLEDGED",)
    assert states_to_report(_view("uscis", "NEW")) == ("ACKNOWLEDGED",)
    assert states_to_report(_view("ngo-west", "RECALL")) == ("ACKNOWLEDGED",)


def test_every_delivery_is_a_case_file_entry_and_content_names_the_known_victims() -> None:
    case = open_case(_view("hsi-vap", "AMENDMENT"))
    assert (case.kind, case.notice) == ("VICTIM_ASSISTANCE_CASE", "AMENDMENT")
    assert known_victims(frozenset({"v0"}), _view("hsi-vap", "NEW")) == {"v0", "v1"}
    assert known_victims(frozenset({"v0"}), _view("hsi-vap", "RECALL")) == {"v0"}


def test_refctl_consent_parses_times_and_scopes() -> None:
    assert parse_time("2026-12-31T23:59:00") == datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert parse_time("2026-12-31T23:59:00Z") == datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time("next tuesday")
    args = build_parser().parse_args(
        ["consent", "grant", "r1", "v1", "IMMIGRATION_RELIEF", "--expires", "2026-12-31"]
    )
    assert (args.referral_id, args.victim_ref, args.scope) == ("r1", "v1", "IMMIGRATION_RELIEF")
    args = build_parser().parse_args(["consent", "withdraw", "r1", "v1", "LAW_ENFORCEMENT_CONTACT"])
    assert args.at is None
