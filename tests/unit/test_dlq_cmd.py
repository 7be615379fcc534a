"""`refctl dlq` without a broker: IDs, the one-line and JSON forms, and what a redrive republishes.

These pieces decide what an operator sees and what goes back into the pipeline, so they are
pinned here: an ID that parses wrongly redrives the wrong record, a listing that shows the value
leaks a referral, and a redrive that keeps the old `dlq_*` headers or drops the attempt count
hides how often a record has failed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from ctroute.operations.v1 import dead_letter_pb2
from plumbing.kafka import dead_letter_headers
from refctl import dlq_cmd
from refctl.__main__ import build_parser
from refctl.dlq_cmd import DeadLetter, DeadLetterId

SECRET_VALUE = b"\x0a\x05Maria canary-value"
WHEN = "2025-03-04T05:06:07.123456+00:00"


@dataclass
class FakeRecord:
    """The attributes of a kafka-python ConsumerRecord that the code reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int = 1_700_000_000_000


def original_headers() -> list[tuple[str, bytes | None]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"evt-1"),
        ("ce_type", b"ctroute.referral.v1.ReferralSubmitted"),
        ("ce_source", b"referral/intake"),
        ("ce_time", b"2025-03-04T05:06:00+00:00"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ]


def a_dead_letter(
    *,
    headers: list[tuple[str, bytes | None]] | None = None,
    attempts: int = 1,
    partition: int = 2,
    offset: int = 17,
    key: bytes | None = b"ref-123",
) -> DeadLetter:
    """A dead letter as the router writes it, via the real `dead_letter_headers`."""
    consumed = FakeRecord(
        "referrals.submitted",
        1,
        42,
        key,
        SECRET_VALUE,
        original_headers() if headers is None else headers,
    )
    dlq = dead_letter_headers(
        consumed, error="undecodable record: bad", group_id="referral-router", attempts=attempts
    )
    dlq = [(k, WHEN.encode()) if k == "dlq_time" else (k, v) for k, v in dlq]
    return DeadLetter.from_record(
        FakeRecord("referrals.deadletter", partition, offset, key, SECRET_VALUE, list(dlq))
    )


# --- IDs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2:17", DeadLetterId(2, 17)), ("0:0", DeadLetterId(0, 0)), (" 1:9 ", DeadLetterId(1, 9))],
)
def test_an_id_is_partition_colon_offset(text: str, expected: DeadLetterId) -> None:
    assert dlq_cmd.parse_id(text) == expected
    assert str(expected) == text.strip()


@pytest.mark.parametrize(
    "text", ["", "17", "2-17", "a:1", "1:b", "-1:3", "1:-3", "1:2:3", "\u0661:\u0662"]
)
def test_a_malformed_id_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"<partition>:<offset>|non-negative integers"):
        dlq_cmd.parse_id(text)


def test_redrive_of_a_malformed_id_fails_before_touching_kafka(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(
        ["dlq", "redrive", "nonsense", "--bootstrap-servers", "127.0.0.1:1"]
    )
    assert args.run(args) == 1
    assert "not a dead-letter ID" in capsys.readouterr().err


def test_the_commands_are_registered_with_their_defaults() -> None:
    listing = build_parser().parse_args(["dlq", "list"])
    assert (listing.run, listing.json, listing.limit) == (dlq_cmd.cmd_list, False, 100)
    redrive = build_parser().parse_args(["dlq", "redrive", "0:1", "--operator", "alice"])
    assert (redrive.run, redrive.id, redrive.operator, redrive.yes) == (
        dlq_cmd.cmd_redrive,
        "0:1",
        "alice",
        False,
    )


def test_redrive_without_an_operator_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("USER", raising=False)
    args = build_parser().parse_args(["dlq", "redrive", "0:1", "--bootstrap-servers", "x:1"])
    assert args.run(args) == 1
    assert "--operator" in capsys.readouterr().err


# --- what an operator sees ---------------------------------------------------------------------


def test_a_dead_letter_reads_its_origin_from_the_headers() -> None:
    letter = a_dead_letter()

    assert letter.id == DeadLetterId(2, 17)
    assert (letter.origin_topic, letter.origin_partition, letter.origin_offset) == (
        "referrals.submitted",
        1,
        42,
    )
    assert letter.consumer_group == "referral-router"
    assert letter.attempts == 1
    assert letter.error == "undecodable record: bad"
    assert letter.event_type == "ctroute.referral.v1.ReferralSubmitted"
    assert letter.when == datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def test_the_line_shows_every_fact_and_never_the_value() -> None:
    line = dlq_cmd.describe(a_dead_letter())

    assert line == (
        "2:17     2025-03-04T05:06:07Z referrals.submitted[1]@42 group=referral-router "
        "attempts=1 type=ctroute.referral.v1.ReferralSubmitted key=ref-123 "
        "error=undecodable record: bad"
    )
    assert "canary" not in line
    assert "Maria" not in line


def test_json_has_the_same_facts_and_no_value() -> None:
    data = dlq_cmd.to_json(a_dead_letter())

    assert data == {
        "id": "2:17",
        "time": "2025-03-04T05:06:07.123456+00:00",
        "topic": "referrals.submitted",
        "partition": 1,
        "offset": 42,
        "consumer_group": "referral-router",
        "attempts": 1,
        "event_type": "ctroute.referral.v1.ReferralSubmitted",
        "key": "ref-123",
        "redriven_from": None,
        "error": "undecodable record: bad",
    }
    assert "canary" not in repr(data)


def test_a_record_without_headers_or_key_still_gets_a_line() -> None:
    letter = a_dead_letter(headers=[], key=None)

    line = dlq_cmd.describe(letter)

    assert line.startswith("2:17     2025-03-04T05:06:07Z referrals.submitted[1]@42 ")
    assert "type=- key=- " in line


def test_missing_dlq_headers_fall_back_to_question_marks_and_the_record_time() -> None:
    letter = DeadLetter.from_record(
        FakeRecord("referrals.deadletter", 0, 3, b"k", b"v", [("dlq_time", b"not a time")])
    )

    assert letter.origin == "?[?]@?"
    assert letter.attempts == 0
    assert letter.when == datetime.fromtimestamp(1_700_000_000, UTC)
    assert dlq_cmd.describe(letter).endswith("error=-")


def test_control_characters_in_headers_cannot_break_the_line_or_drive_the_terminal() -> None:
    letter = a_dead_letter(key=b"ref-1\n\x1b[31mred")

    line = dlq_cmd.describe(letter)

    assert "\n" not in line
    assert "\x1b" not in line
    assert "key=ref-1??[31mred" in line


def test_newest_keeps_the_most_recent_oldest_first() -> None:
    def at(second: int, offset: int) -> DeadLetter:
        stamp = f"2025-03-04T05:06:{second:02d}+00:00".encode()
        return DeadLetter.from_record(
            FakeRecord("referrals.deadletter", 0, offset, b"k", b"v", [("dlq_time", stamp)])
        )

    letters = [at(30, 3), at(10, 1), at(20, 2), at(40, 4)]

    assert [str(x.id) for x in dlq_cmd.newest(letters, 2)] == ["0:3", "0:4"]
    assert [str(x.id) for x in dlq_cmd.newest(letters, 0)] == ["0:1", "0:2", "0:3", "0:4"]


# --- what a redrive republishes ----------------------------------------------------------------


def test_redrive_keeps_the_original_headers_drops_dlq_ones_and_carries_the_attempts() -> None:
    letter = a_dead_letter(attempts=3)

    headers = dlq_cmd.redrive_headers(letter)

    assert headers == [
        *original_headers(),
        ("dlq_redriven_from", b"2:17"),
        ("dlq_redriven_attempts", b"3"),
    ]


def test_a_redriven_record_that_fails_again_counts_every_attempt() -> None:
    first = a_dead_letter(attempts=1)
    republished = FakeRecord(
        "referrals.submitted", 0, 99, first.key, first.value, list(dlq_cmd.redrive_headers(first))
    )

    again = dead_letter_headers(republished, error="e", group_id="g", attempts=1)
    second = DeadLetter.from_record(FakeRecord("referrals.deadletter", 1, 5, b"k", b"v", again))

    assert second.attempts == 2
    assert second.redriven_from == "2:17"
    assert (second.origin_topic, second.origin_offset) == ("referrals.submitted", 99)
    # A second redrive starts from a clean set of dlq_* headers again.
    assert [k for k, _ in dlq_cmd.redrive_headers(second) if k.startswith("dlq_")] == [
        "dlq_redriven_from",
        "dlq_redriven_attempts",
    ]
    assert dict(dlq_cmd.redrive_headers(second))["dlq_redriven_attempts"] == b"2"


@pytest.mark.parametrize("bad", [b"two", b"-4", b"", "²".encode()])
def test_a_malformed_carried_attempt_count_does_not_stop_dead_lettering(bad: bytes) -> None:
    record = FakeRecord("t", 0, 1, b"k", b"v", [("dlq_redriven_attempts", bad)])

    headers = dead_letter_headers(record, error="e", group_id="g", attempts=1)

    assert dict(headers)["dlq_attempts"] == b"1"


def test_the_audit_event_says_what_went_where_and_who_did_it() -> None:
    letter = a_dead_letter(attempts=2)
    when = datetime(2025, 3, 5, 8, 0, tzinfo=UTC)

    event = dlq_cmd.redriven_event(
        letter,
        operator="alice",
        when=when,
        topic="referrals.submitted",
        partition=0,
        offset=120,
    )

    assert event == dead_letter_pb2.DeadLetterRedriven(
        dead_letter_id="2:17",
        original_topic="referrals.submitted",
        original_partition=1,
        original_offset=42,
        attempts=2,
        operator="alice",
        redriven_at=event.redriven_at,
        republished_topic="referrals.submitted",
        republished_partition=0,
        republished_offset=120,
    )
    assert event.redriven_at.ToDatetime(tzinfo=UTC) == when


def test_list_prints_one_line_each_and_a_count_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = [a_dead_letter(offset=1), a_dead_letter(offset=2)]
    asked: list[int] = []

    def fake_read(bootstrap_servers: str, *, limit: int, timeout: float) -> list[DeadLetter]:
        asked.append(limit)
        return letters[-limit:] if limit else letters

    monkeypatch.setattr(dlq_cmd, "read_dead_letters", fake_read)
    run = build_parser().parse_args

    args = run(["dlq", "list", "--limit", "0"])
    assert args.run(args) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [dlq_cmd.describe(letter) for letter in letters]
    assert err == "2 dead letters of referrals.deadletter\n"

    args = run(["dlq", "list", "--json", "--limit", "1"])
    assert args.run(args) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["2:2"]
    assert err == "the newest 1 dead letter of referrals.deadletter\n"
    assert asked == [0, 1]

    args = run(["dlq", "list", "--limit", "-1"])
    assert args.run(args) == 1
    assert "--limit" in capsys.readouterr().err
