"""`refctl dlq list` and `refctl dlq redrive ID`: see what consumers parked, send it through again.

A record a consumer cannot decode or accept goes to the dead-letter topic so the pipeline keeps
moving. An operator then needs to see what is parked and why, without seeing the content (values
carry personal data: this tool never prints or decodes them), and once the cause is fixed (a new
policy, a corrected producer) to put the record back on the topic it came from so the current
router and policy process it again. A redrive is an action on a referral, so it is recorded as a
`DeadLetterRedriven` event on the lifecycle topic, keyed like the record, for auditors.

A dead letter's ID is where it sits in the dead-letter topic, `<partition>:<offset>` (e.g. `2:17`):
short, stable (Kafka never reuses an offset) and enough to fetch the record directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from ctroute.operations.v1 import dead_letter_pb2
from plumbing import config, topics
from plumbing.envelope import EnvelopeError, Headers, decode_event, header_value
from plumbing.kafka import REDRIVEN_ATTEMPTS_HEADER, EventPublisher, consumer_settings

SOURCE = "refctl"
DLQ_HEADER_PREFIX = "dlq_"
"""Every header a dead-lettering consumer or a redrive adds starts with this."""
REDRIVEN_FROM_HEADER = "dlq_redriven_from"
"""Set on a republished record: the ID of the dead letter it was redriven from."""
DEFAULT_LIMIT = 100
_REDRIVEN_TYPE = dead_letter_pb2.DeadLetterRedriven.DESCRIPTOR.full_name


class DlqError(Exception):
    """Something the operator must fix or know; the message says what to do next."""


@dataclass(frozen=True, order=True)
class DeadLetterId:
    """Where a dead letter sits in the dead-letter topic."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


def parse_id(text: str) -> DeadLetterId:
    """`<partition>:<offset>` as printed by `dlq list`; ValueError says what is wrong."""
    partition, sep, offset = text.strip().partition(":")
    if not sep or not partition.isascii() or not offset.isascii():
        raise ValueError(
            f"{text!r} is not a dead-letter ID: expected <partition>:<offset>, e.g. 2:17"
        )
    if not (partition.isdigit() and offset.isdigit()):
        raise ValueError(
            f"{text!r} is not a dead-letter ID: partition and offset are non-negative integers"
        )
    return DeadLetterId(int(partition), int(offset))


def printable(text: str) -> str:
    """`text` safe for one terminal line: control characters and the like become '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic: its ID, the original key/value/headers and the
    `dlq_*` headers that say where it came from and why it was parked."""

    id: DeadLetterId
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        """From a kafka-python ConsumerRecord of the dead-letter topic."""
        headers: Headers = [(k, v) for k, v in (record.headers or []) if v is not None]
        return cls(
            DeadLetterId(record.partition, record.offset),
            record.key,
            record.value,
            headers,
            record.timestamp,
        )

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    @property
    def origin_topic(self) -> str | None:
        return self.header("dlq_topic")

    @property
    def origin_partition(self) -> int | None:
        return _int_or_none(self.header("dlq_partition"))

    @property
    def origin_offset(self) -> int | None:
        return _int_or_none(self.header("dlq_offset"))

    @property
    def attempts(self) -> int:
        return _int_or_none(self.header("dlq_attempts")) or 0

    @property
    def error(self) -> str:
        return self.header("dlq_error") or ""

    @property
    def consumer_group(self) -> str:
        return self.header("dlq_consumer_group") or ""

    @property
    def event_type(self) -> str | None:
        return self.header("ce_type")

    @property
    def redriven_from(self) -> str | None:
        return self.header(REDRIVEN_FROM_HEADER)

    @property
    def key_text(self) -> str:
        return (self.key or b"").decode("utf-8", errors="replace")

    @property
    def when(self) -> datetime:
        """When it was dead-lettered: the `dlq_time` header, else the record's timestamp."""
        stamp = self.header("dlq_time")
        if stamp:
            try:
                parsed = datetime.fromisoformat(stamp)
            except ValueError:
                pass
            else:
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    @property
    def origin(self) -> str:
        """`topic[partition]@offset` of the record before it was dead-lettered."""
        partition, offset = self.origin_partition, self.origin_offset
        return (
            f"{self.origin_topic or '?'}[{'?' if partition is None else partition}]"
            f"@{'?' if offset is None else offset}"
        )


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(letter: DeadLetter) -> str:
    """One line for a person: ID, when, origin, group, attempts, type, key, then the error.

    Never the value: it holds the referral's content.
    """
    line = (
        f"{letter.id!s:<8} {_utc(letter.when)} {printable(letter.origin)} "
        f"group={printable(letter.consumer_group) or '-'} attempts={letter.attempts} "
        f"type={printable(letter.event_type or '-')} key={printable(letter.key_text) or '-'}"
    )
    if letter.redriven_from:
        line += f" redriven-from={printable(letter.redriven_from)}"
    return f"{line} error={printable(letter.error) or '-'}"


def to_json(letter: DeadLetter) -> dict[str, object]:
    """The same facts as `describe`, for scripts (never the value)."""
    return {
        "id": str(letter.id),
        "time": letter.when.astimezone(UTC).isoformat(),
        "topic": letter.origin_topic,
        "partition": letter.origin_partition,
        "offset": letter.origin_offset,
        "consumer_group": letter.consumer_group,
        "attempts": letter.attempts,
        "event_type": letter.event_type,
        "key": letter.key_text,
        "redriven_from": letter.redriven_from,
        "error": letter.error,
    }


def newest(letters: Iterable[DeadLetter], limit: int) -> list[DeadLetter]:
    """The `limit` most recent dead letters (all for 0), oldest first."""
    ordered = sorted(letters, key=lambda letter: (letter.when, letter.id))
    return ordered[-limit:] if limit > 0 else ordered


def redrive_headers(letter: DeadLetter) -> Headers:
    """The original headers without any `dlq_*` header, plus where the redrive came from and the
    attempts spent so far; a consumer that dead-letters the record again adds its own attempts
    to those (`plumbing.kafka.dead_letter_headers`)."""
    headers = [(k, v) for k, v in letter.headers if not k.startswith(DLQ_HEADER_PREFIX)]
    headers += [
        (REDRIVEN_FROM_HEADER, str(letter.id).encode()),
        (REDRIVEN_ATTEMPTS_HEADER, str(letter.attempts).encode()),
    ]
    return headers


def redriven_event(
    letter: DeadLetter,
    *,
    operator: str,
    when: datetime,
    topic: str,
    partition: int,
    offset: int,
) -> dead_letter_pb2.DeadLetterRedriven:
    """The audit event for a redrive that landed at `topic[partition]@offset`."""
    event = dead_letter_pb2.DeadLetterRedriven(
        dead_letter_id=str(letter.id),
        original_topic=letter.origin_topic or "",
        original_partition=letter.origin_partition or 0,
        original_offset=letter.origin_offset or 0,
        attempts=letter.attempts,
        operator=operator,
        republished_topic=topic,
        republished_partition=partition,
        republished_offset=offset,
    )
    event.redriven_at.FromDatetime(when)
    return event


# --- reading the broker ------------------------------------------------------------------------


def _consumer(bootstrap_servers: str) -> Any:
    return KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **consumer_settings(),
    )


def _partitions(consumer: Any, topic: str, bootstrap_servers: str) -> list[Any]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        raise DlqError(
            f"no topic {topic} on {bootstrap_servers}: is this the system's broker? "
            "(pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS)"
        )
    return [TopicPartition(topic, p) for p in sorted(found)]


def _read_range(
    consumer: Any,
    starts: dict[Any, int],
    ends: dict[Any, int],
    on_record: Callable[[Any], None],
    *,
    timeout: float,
) -> None:
    """Hand every record between `starts` and `ends` (exclusive) to `on_record`."""
    wanted = [tp for tp in ends if starts[tp] < ends[tp]]
    if not wanted:
        return
    consumer.assign(wanted)
    for tp in wanted:
        consumer.seek(tp, starts[tp])
    deadline = time.monotonic() + timeout
    while any(consumer.position(tp) < ends[tp] for tp in wanted):
        if time.monotonic() > deadline:
            raise DlqError(f"timed out after {timeout:g}s reading {wanted[0].topic}")
        for tp, records in consumer.poll(timeout_ms=200).items():
            for record in records:
                if record.offset < ends[tp]:
                    on_record(record)


def read_dead_letters(bootstrap_servers: str, *, limit: int, timeout: float) -> list[DeadLetter]:
    """The dead letters now in the topic; with a limit only the last `limit` of each partition
    are read, which always contains the `limit` newest overall."""
    consumer = _consumer(bootstrap_servers)
    try:
        partitions = _partitions(consumer, topics.DEAD_LETTER, bootstrap_servers)
        beginnings = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        starts = {
            tp: max(beginnings[tp], ends[tp] - limit) if limit > 0 else beginnings[tp]
            for tp in partitions
        }
        letters: list[DeadLetter] = []
        _read_range(
            consumer,
            starts,
            ends,
            lambda record: letters.append(DeadLetter.from_record(record)),
            timeout=timeout,
        )
        return newest(letters, limit)
    finally:
        consumer.close()


def fetch_dead_letter(
    bootstrap_servers: str, letter_id: DeadLetterId, *, timeout: float
) -> DeadLetter:
    """The dead letter with this ID; DlqError when there is none."""
    consumer = _consumer(bootstrap_servers)
    try:
        partitions = _partitions(consumer, topics.DEAD_LETTER, bootstrap_servers)
        tp = TopicPartition(topics.DEAD_LETTER, letter_id.partition)
        if tp not in partitions:
            raise DlqError(
                f"no dead letter {letter_id}: {topics.DEAD_LETTER} has partitions "
                f"0-{len(partitions) - 1}"
            )
        first = consumer.beginning_offsets([tp])[tp]
        end = consumer.end_offsets([tp])[tp]
        if not first <= letter_id.offset < end:
            held = f"offsets {first}-{end - 1}" if end > first else "no records"
            raise DlqError(
                f"no dead letter {letter_id}: partition {tp.partition} of "
                f"{topics.DEAD_LETTER} holds {held} (see `refctl dlq list`)"
            )
        found: list[Any] = []
        _read_range(
            consumer,
            {tp: letter_id.offset},
            {tp: letter_id.offset + 1},
            found.append,
            timeout=timeout,
        )
        if not found or found[0].offset != letter_id.offset:
            raise DlqError(f"no dead letter {letter_id}: the record is no longer in the topic")
        return DeadLetter.from_record(found[0])
    finally:
        consumer.close()


@dataclass(frozen=True)
class EarlierRedrive:
    """A `DeadLetterRedriven` event found on the lifecycle topic."""

    event: dead_letter_pb2.DeadLetterRedriven
    topic: str
    partition: int
    offset: int


def earlier_redrives(
    bootstrap_servers: str, letter_id: DeadLetterId, *, timeout: float
) -> list[EarlierRedrive]:
    """Every redrive of this dead letter recorded on the lifecycle topic so far.

    Reads the whole lifecycle topic but decodes only the records whose `ce_type` says they are
    redrive events.
    """
    consumer = _consumer(bootstrap_servers)
    found: list[EarlierRedrive] = []

    def check(record: Any) -> None:
        if header_value(record.headers, "ce_type") != _REDRIVEN_TYPE:
            return
        try:
            _, event = decode_event(record.headers, record.value)
        except EnvelopeError:
            return
        if not isinstance(event, dead_letter_pb2.DeadLetterRedriven):
            return
        if event.dead_letter_id == str(letter_id):
            found.append(EarlierRedrive(event, record.topic, record.partition, record.offset))

    try:
        partitions = _partitions(consumer, topics.LIFECYCLE, bootstrap_servers)
        beginnings = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        _read_range(consumer, beginnings, ends, check, timeout=timeout)
        return found
    finally:
        consumer.close()


def describe_redrive(redrive: EarlierRedrive) -> str:
    event = redrive.event
    return (
        f"{_utc(event.redriven_at.ToDatetime(tzinfo=UTC))} by {printable(event.operator)} to "
        f"{printable(event.republished_topic)}[{event.republished_partition}]"
        f"@{event.republished_offset}"
    )


# --- commands ----------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"refctl: {message}", file=sys.stderr)
    return 1


def _kafka_failure(error: KafkaError, bootstrap_servers: str) -> int:
    return _fail(
        f"Kafka at {bootstrap_servers} failed: {error or type(error).__name__} "
        "(is the broker running? pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS)"
    )


def cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        return _fail("--limit must be 0 (all) or more")
    try:
        letters = read_dead_letters(args.bootstrap_servers, limit=args.limit, timeout=args.timeout)
    except DlqError as error:
        return _fail(str(error))
    except KafkaError as error:
        return _kafka_failure(error, args.bootstrap_servers)
    for letter in letters:
        if args.json:
            print(json.dumps(to_json(letter), sort_keys=True), flush=True)
        else:
            print(describe(letter), flush=True)
    shown = f"the newest {len(letters)}" if 0 < args.limit <= len(letters) else str(len(letters))
    print(
        f"{shown} dead letter{'s' if len(letters) != 1 else ''} of {topics.DEAD_LETTER}"
        + ("" if letters else " (nothing is parked)"),
        file=sys.stderr,
    )
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    try:
        letter_id = parse_id(args.id)
    except ValueError as error:
        return _fail(str(error))
    operator = (args.operator or os.environ.get("USER") or "").strip()
    if not operator or not operator.isprintable() or len(operator) > 128:
        return _fail("say who is redriving: pass --operator NAME (printable, at most 128 chars)")
    try:
        letter = fetch_dead_letter(args.bootstrap_servers, letter_id, timeout=args.timeout)
        if not letter.origin_topic:
            raise DlqError(
                f"{topics.DEAD_LETTER} {letter_id} has no dlq_topic header: "
                "its origin is unknown, so it cannot be redriven"
            )
        earlier = earlier_redrives(args.bootstrap_servers, letter_id, timeout=args.timeout)
    except DlqError as error:
        return _fail(str(error))
    except KafkaError as error:
        return _kafka_failure(error, args.bootstrap_servers)
    if earlier:
        print(
            f"refctl: warning: dead letter {letter_id} was already redriven:",
            file=sys.stderr,
        )
        for redrive in earlier:
            print(f"  {describe_redrive(redrive)}", file=sys.stderr)
        if not args.yes:
            return _fail("not redriven again; pass --yes to redrive it anyway")
    return _redrive(args, letter, operator)


def _redrive(args: argparse.Namespace, letter: DeadLetter, operator: str) -> int:
    topic = letter.origin_topic or ""
    try:
        publisher = EventPublisher(args.bootstrap_servers, source=SOURCE)
    except KafkaError as error:
        return _kafka_failure(error, args.bootstrap_servers)
    try:
        # The key decides the partition, as for the original producer, so the record stays in
        # order with the other events of its referral.
        try:
            landed = publisher.publish_raw(
                topic, letter.key, letter.value, redrive_headers(letter)
            ).get(timeout=args.timeout)
        except KafkaError as error:
            return _fail(
                f"republishing {letter.id} to {printable(topic)} failed: {type(error).__name__}; "
                f"it may still arrive: check for {REDRIVEN_FROM_HEADER}={letter.id} before retrying"
            )
        print(
            f"redrove dead letter {letter.id} (from {printable(letter.origin)}, "
            f"attempts {letter.attempts}, type {printable(letter.event_type or '-')}, "
            f"key {printable(letter.key_text) or '-'})\n"
            f"  republished to {landed.topic}[{landed.partition}]@{landed.offset} with "
            f"{REDRIVEN_FROM_HEADER}={letter.id} {REDRIVEN_ATTEMPTS_HEADER}={letter.attempts}",
            flush=True,
        )
        event = redriven_event(
            letter,
            operator=operator,
            when=datetime.now(UTC),
            topic=landed.topic,
            partition=landed.partition,
            offset=landed.offset,
        )
        try:
            audit = publisher.publish(topics.LIFECYCLE, letter.key_text, event).get(
                timeout=args.timeout
            )
        except Exception as error:
            return _fail(
                f"the record was republished but the audit event was not recorded "
                f"({type(error).__name__}); tell the auditors: {letter.id} redriven by "
                f"{operator} to {landed.topic}[{landed.partition}]@{landed.offset}"
            )
        print(
            f"  recorded DeadLetterRedriven by {printable(operator)} on "
            f"{audit.topic}[{audit.partition}]@{audit.offset}",
            flush=True,
        )
        return 0
    finally:
        publisher.close()


def register(commands: Any) -> None:
    """Add `dlq list` and `dlq redrive` to refctl's subcommands."""
    dlq = commands.add_parser("dlq", help="list and redrive dead-lettered records")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list",
        help="one line per dead letter: ID, when, origin, group, attempts, type, key, error",
        description="IDs are <partition>:<offset> in the dead-letter topic. "
        "Values are never shown.",
    )
    listing.add_argument("--bootstrap-servers", default=config.kafka_bootstrap_servers())
    listing.add_argument("--json", action="store_true", help="print each dead letter as JSON")
    listing.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"show the N most recent (default {DEFAULT_LIMIT}; 0: all)",
    )
    listing.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    listing.set_defaults(run=cmd_list)

    redrive = actions.add_parser(
        "redrive",
        help="republish a dead letter to its original topic and record who did it",
        description="Puts the original key, value and headers back on the topic the record came "
        "from, so the current router and policy process it again, and publishes a "
        "DeadLetterRedriven event on the lifecycle topic.",
    )
    redrive.add_argument("id", help="dead-letter ID as shown by `refctl dlq list`, e.g. 2:17")
    redrive.add_argument("--operator", default=None, help="who is redriving (default: $USER)")
    redrive.add_argument(
        "--yes", action="store_true", help="redrive even if this ID was redriven before"
    )
    redrive.add_argument("--bootstrap-servers", default=config.kafka_bootstrap_servers())
    redrive.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    redrive.set_defaults(run=cmd_redrive)
