"""Hypothesis strategies for bad input at the system's two edges: gRPC requests and Kafka records.

Requests (`SubmitReferralRequest`):
  - `valid_requests`: referrals that pass every contract rule, with varied, realistic content;
  - `near_valid_requests`: a valid request with exactly one thing broken (a field out of range, a
    bad pattern, an unknown enum number, a missing required part, a list too long, ...);
  - `edge_timestamp_requests`: a valid request with one timestamp at or past the edge of what a
    Timestamp can hold; `oversized_request`: valid by every rule but over the 512 KiB limit;
  - `arbitrary_requests`: every field drawn from its wire type with no regard to the rules
    (unicode, huge, negative, NaN, unknown enum numbers, out-of-range timestamps);
  - `mutated_request_bytes` / `random_request_bytes`: bytes as a client could send them:
    serialized requests truncated, bit-flipped, spliced or extended, and plain random bytes.

Kafka records (`KafkaRecord`: key, value, headers):
  - random bytes and random headers;
  - valid CloudEvents headers with garbage values;
  - valid values under broken headers (missing, null, repeated, renamed, garbage trace context);
  - a wrong `ce_type` (another contract message, an enum, a service, a foreign type);
  - truncated or corrupted protobuf under correct headers;
  - and, so the properties also cover the happy path, well-formed events.

Everything is deterministic given hypothesis' choices (no uuid4, and the clock only for "a date
of birth in the future", which starts tomorrow), so a failure replays.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from ctroute.partner.v1 import delivery_pb2
from ctroute.referral.v1 import intake_pb2, lifecycle_pb2
from ctroute.referral.v1 import referral_pb2 as R
from plumbing import contract, topics
from plumbing.envelope import CONTENT_TYPE, SPEC_VERSION
from referral.adapters.ledger import referral_id_for
from referral.domain.policy import load_default_policy

M = TypeVar("M", bound=Message)
Draw = Callable[[st.SearchStrategy[Any]], Any]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TODAY = date.today()
BIRTH_DAYS = (date(2025, 12, 31) - date(1900, 1, 1)).days
"""Valid dates of birth: 1900-01-01 up to a fixed day in the past, so they stay valid."""
EPOCH_MIN = datetime(1990, 1, 1, tzinfo=UTC)
EPOCH_MAX = datetime(2035, 1, 1, tzinfo=UTC)
PARTNERS = sorted(load_default_policy().partners)
US_STATES = ("VA", "TX", "CA", "FL", "NY", "PR", "GU", "DC", "WA", "IL", "ZZ")

# --- text and numbers -----------------------------------------------------------------------

NASTY_STRINGS = (
    "",
    " ",
    "\x00",
    "\x00\x01\x02\x7f",
    "\u202eevil\u202c",
    "\ufeffBOM",
    "\U0001f4a5\U0001f9e8",
    "Z\u0351\u0334\u0358a\u0308\u0301lgo",
    "\u0130stanbul \u00df \ufb03",
    "\uffff\U0010ffff",
    "%s%n%x",
    "${jndi:ldap://example.invalid/a}",
    "'; DROP TABLE accepted; --",
    "<script>alert(1)</script>",
    "../../../../../not-a-file",
    "\r\n\r\nX-Injected: 1",
    "null",
    "-1",
    "1e400",
    "NaN",
    "\t\n\x0b\x0c\r",
)


def huge_text(min_size: int = 1_000, max_size: int = 30_000) -> st.SearchStrategy[str]:
    """Long strings, built by repeating a short drawn chunk (drawing every character is slow)."""
    return st.builds(
        lambda chunk, size: (chunk * (size // len(chunk) + 1))[:size],
        st.text(min_size=1, max_size=8),
        st.integers(min_size, max_size),
    )


SHORT_TEXT = st.one_of(st.text(max_size=24), st.sampled_from(NASTY_STRINGS))
ANY_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(NASTY_STRINGS),
    st.text(alphabet=string.printable, min_size=4, max_size=80),
    huge_text(100, 3_000),
)
INT32 = st.one_of(st.integers(-3, 130), st.integers(INT32_MIN, INT32_MAX))
INT64 = st.one_of(st.integers(-3, 130), st.integers(INT64_MIN, INT64_MAX))
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)


@functools.cache
def any_enum_number(enum_values: tuple[int, ...]) -> st.SearchStrategy[int]:
    """Defined values, zero, small unknown numbers, negatives and the int32 extremes."""
    return st.one_of(
        st.sampled_from(enum_values),
        st.integers(-2, max(enum_values) + 3),
        st.sampled_from([INT32_MIN, INT32_MAX, 99, 2**16]),
    )


@functools.cache
def unknown_enum_number(
    low: int, high: int, *, zero_is_valid: bool = False
) -> st.SearchStrategy[int]:
    """Numbers outside the defined values low..high: 0 (unless valid), near misses, extremes."""
    outside = [high + 1, 99, 2**16, INT32_MAX, INT32_MIN, -1]
    return st.one_of(
        st.sampled_from(outside if zero_is_valid or low == 0 else [0, *outside]),
        st.integers(high + 1, INT32_MAX),
        st.integers(INT32_MIN, -1),
    )


# --- valid requests ------------------------------------------------------------------------------
#
# Valid referrals are built from one drawn seed with `random.Random`: hypothesis spends about
# 0.1 ms a choice here, and a rich referral needs a hundred, which would not fit 10,000 examples a
# minute. The seed is still a hypothesis choice, so runs are deterministic; the parts that are
# meant to be bad (the breakage, arbitrary values, corrupted bytes) are drawn by hypothesis itself.

LOWER, UPPER, DIGITS = string.ascii_lowercase, string.ascii_uppercase, string.digits
_SCRIPTS = (
    (0x20, 0x7E),  # ASCII
    (0xA0, 0x24F),  # Latin-1 and Latin Extended
    (0x400, 0x4FF),  # Cyrillic
    (0x600, 0x6FF),  # Arabic
    (0x4E00, 0x4FFF),  # CJK
    (0x1F300, 0x1F6FF),  # emoji
    (0xE000, 0xE0FF),  # private use
)


def chars(alphabet: str, min_size: int, max_size: int | None = None) -> st.SearchStrategy[str]:
    """Strings over `alphabet`: one hypothesis choice, much cheaper than `from_regex`."""
    return st.text(alphabet=alphabet, min_size=min_size, max_size=max_size or min_size)


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class _Valid:
    """Builds one valid referral from a seed: every field within its rule, content varied."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self, max_size: int, min_size: int = 0) -> str:
        rng = self.rng
        if rng.random() < 0.15:
            choice = rng.choice(NASTY_STRINGS)
            if min_size <= len(choice) <= max_size:
                return choice
        low, high = rng.choice(_SCRIPTS)
        size = rng.randint(min_size, min(max_size, rng.choice([8, 40, max_size])))
        chunk = "".join(chr(rng.randint(low, high)) for _ in range(min(size, 48)))
        return (chunk * (size // max(len(chunk), 1) + 1))[:size]

    def word(self, alphabet: str, min_size: int, max_size: int | None = None) -> str:
        size = self.rng.randint(min_size, max_size or min_size)
        return "".join(self.rng.choice(alphabet) for _ in range(size))

    def maybe(self, probability: float = 0.5) -> bool:
        return self.rng.random() < probability

    def moment(self) -> datetime:
        span = (EPOCH_MAX - EPOCH_MIN).total_seconds()
        return EPOCH_MIN + timedelta(seconds=self.rng.uniform(0, span))

    def consent(self) -> R.Consent:
        granted = self.moment()
        consent = R.Consent(
            scope=self.rng.randint(1, 3),
            granted_at=timestamp(granted),
            expires_at=timestamp(granted + timedelta(seconds=self.rng.randint(1, 10**9))),
        )
        if self.maybe(0.2):
            consent.withdrawn_at.CopyFrom(timestamp(self.moment()))
        return consent

    def victim(self) -> R.PotentialVictim:
        rng = self.rng
        victim = R.PotentialVictim(
            victim_ref=self.word(LOWER + UPPER + DIGITS + "_-", 1, 32),
            count=rng.choice([0, 1, 2, rng.randint(0, 10_000)]),
            needs=[rng.randint(1, 7) for _ in range(rng.randint(0, 3))],
            safety_concerns=self.text(2_000),
        )
        if self.maybe():
            victim.age = rng.choice([0, 17, 18, 120, rng.randint(0, 120)])
        if self.maybe():
            victim.full_name = self.text(200)
            born = date(1900, 1, 1) + timedelta(days=rng.randint(0, BIRTH_DAYS))
            victim.date_of_birth = born.isoformat()
        if self.maybe():
            victim.phone = rng.choice(["", "+"]) + self.word(DIGITS + " ()-", 7, 20)
            victim.email = rng.choice(EMAIL_EXAMPLES)
        if self.maybe():
            victim.nationality = self.word(UPPER, 2)
            victim.us_state = rng.choice(US_STATES)
            victim.preferred_language = rng.choice(["es", "en", "zh-Hant", "ht", "pt-BR", "vi"])
            victim.immigration_status = self.text(200)
        if self.maybe(0.3):
            victim.home_address.CopyFrom(
                R.VictimAddress(
                    street=self.text(300),
                    city=self.text(100),
                    us_state=rng.choice(US_STATES),
                    postal_code=rng.choice(["22150", "77001-1234", "00901"]),
                )
            )
            victim.documents.add(
                kind=rng.randint(0, 4), number=self.text(64), issuing_country=self.word(UPPER, 2)
            )
        victim.consents.extend(self.consent() for _ in range(rng.randint(0, 3)))
        if self.maybe(0.2):
            victim.description = self.text(2_000)
        return victim

    def location(self) -> R.Location:
        rng = self.rng
        kind = rng.randint(1, 6)
        location = R.Location(kind=kind)
        if kind == R.LOCATION_KIND_AT_SEA:
            location.coordinates.latitude = rng.choice([-90.0, 90.0, 0.0, rng.uniform(-90, 90)])
            location.coordinates.longitude = rng.choice([-180.0, 180.0, rng.uniform(-180, 180)])
            return location
        location.us_state = rng.choice(US_STATES)
        if kind == R.LOCATION_KIND_US_ADDRESS and self.maybe():
            location.address.street = self.text(300)
            location.address.city = self.text(100)
            location.address.postal_code = "22150"
        elif kind == R.LOCATION_KIND_PORT_OF_ENTRY:
            location.port_of_entry_code = self.word(DIGITS, 4)
        elif kind == R.LOCATION_KIND_AIRPORT:
            location.airport_code = self.word(UPPER, 3)
        elif kind == R.LOCATION_KIND_FLIGHT:
            location.flight_number = self.word(UPPER + DIGITS, 2) + self.word(DIGITS, 1, 4)
        return location

    def referral(self) -> R.Referral:
        rng = self.rng
        source = rng.choice(["hsi-tipline", "ccht-hotline", "cbp-eallegations", "uscg-boarding"])
        referral = R.Referral(
            source=source if self.maybe() else self.word(LOWER, 1) + self.word(LOWER + "-0", 1, 62),
            source_reference=self.text(128, min_size=1),
            indicators=rng.sample(range(1, 9), rng.randint(0, 8)),
            imminent_danger=self.maybe(0.2),
        )
        if not referral.indicators or self.maybe():
            referral.narrative = self.text(20_000, min_size=1)
        if self.maybe():
            referral.observed_at.CopyFrom(timestamp(self.moment()))
        referral.victims.extend(self.victim() for _ in range(rng.choice([0, 1, 1, 2, 4])))
        referral.locations.extend(self.location() for _ in range(rng.randint(0, 3)))
        if self.maybe(0.3):
            referral.suspects.add(
                name=self.text(200), aliases=[self.text(200)], phone=self.text(32)
            )
        if self.maybe(0.4):
            referral.reporter.CopyFrom(
                R.Reporter(
                    anonymous=self.maybe(),
                    name=self.text(200),
                    email=rng.choice(["", *EMAIL_EXAMPLES]),
                    role=self.text(100),
                )
            )
        if self.maybe(0.3):
            referral.vessel.CopyFrom(
                R.Vessel(
                    name=self.text(200),
                    imo_number=self.word(DIGITS, 7),
                    mmsi=rng.choice(["", self.word(DIGITS, 9)]),
                    flag_state=self.word(UPPER, 2),
                )
            )
        if self.maybe(0.3):
            referral.goods.add(
                product=self.text(300),
                hts_code=rng.choice(["6116", "6116.10", "6116.10.4810", ""]),
                country_of_origin=self.word(UPPER, 2),
                destined_for_us=self.maybe(),
                shipment_ids=[self.text(64) for _ in range(rng.randint(0, 3))],
            )
        if self.maybe(0.2):
            referral.attachments.add(
                uri=rng.choice(["https://evidence.example/a/1", "s3://bucket/key.jpg"]),
                media_type="image/jpeg",
                sha256=rng.choice(["", self.word(DIGITS + "abcdef", 64)]),
            )
        return referral


EMAIL_EXAMPLES = ("maria@example.org", "a.b-c@example.com", "x@sub.example.net", "t+1@example.gov")
SEEDS = st.integers(0, 2**32 - 1)
MOMENTS = st.datetimes(
    min_value=EPOCH_MIN.replace(tzinfo=None),
    max_value=EPOCH_MAX.replace(tzinfo=None),
    timezones=st.just(UTC),
)


def valid_referrals() -> st.SearchStrategy[R.Referral]:
    """A referral as a source would submit it: no referral_id, no received_at, every rule met."""
    return SEEDS.map(lambda seed: _Valid(seed).referral())


def valid_requests() -> st.SearchStrategy[intake_pb2.SubmitReferralRequest]:
    return valid_referrals().map(lambda r: intake_pb2.SubmitReferralRequest(referral=r))


# --- near-valid requests: one thing broken -------------------------------------------------------
#
# Strategies used inside the breakers are built once, here: building one costs about as much as
# drawing from it.

Breaker = Callable[[Draw, R.Referral], None]

BOOLEANS = st.booleans()
NON_EMPTY_TEXT = st.text(min_size=1, max_size=100)
NEGATIVE_INT32 = st.integers(INT32_MIN, -1)
AGES_OUT_OF_RANGE = st.one_of(NEGATIVE_INT32, st.integers(121, INT32_MAX))
COUNTS_OUT_OF_RANGE = st.one_of(NEGATIVE_INT32, st.integers(10_001, INT32_MAX))
BAD_INDICATOR_LISTS = st.one_of(
    st.lists(unknown_enum_number(1, 8), min_size=1, max_size=3).map(lambda bad: [1, *bad]),
    st.just([2, 5, 2]),
    st.just([*range(1, 9), *range(1, 9), 1]),
)
BAD_DATES_OF_BIRTH = st.one_of(
    st.sampled_from(["2001-02-29", "1999-13-01", "1899-12-31", "31/12/2001", "2001-2-3"]),
    st.dates(min_value=TODAY + timedelta(days=1)).map(date.isoformat),
    SHORT_TEXT.filter(bool),
)
BAD_EMAILS = st.sampled_from(["maria(at)example.org", "@example.org", "a@", "a b@x.org", "x"])
CONSENT_BREAKS = st.sampled_from(["no-expiry", "no-grant", "expires-first", "scope"])
SMALL_GAPS = st.integers(0, 9)
OUTSIDE_DEGREES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not -180 <= x <= 180),
    st.just(float("nan")),
)
LATITUDES_OUT_OF_RANGE = st.one_of(OUTSIDE_DEGREES, st.floats(90.000001, 1e300))
LONGITUDES = st.one_of(st.floats(-180, 180), OUTSIDE_DEGREES)
BAD_URIS = st.sampled_from(["evidence photo 1", "", "http://[::1", "::", "\x00", "%zz"])
BAD_REPORTER_EMAILS = st.sampled_from(["no-at-sign", "a@@b", "@"])
EXTRA_ITEMS = st.integers(1, 3)

VICTIM_PATTERNS = st.sampled_from(
    [
        ("victim_ref", r"[A-Za-z0-9_-]{1,32}"),
        ("phone", r"\+?[0-9 ()-]{7,20}"),
        ("nationality", r"[A-Z]{2}"),
        ("us_state", r"[A-Z]{2}"),
        ("preferred_language", r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*"),
    ]
)
LOCATION_PATTERNS = st.sampled_from(
    [
        ("us_state", r"[A-Z]{2}"),
        ("port_of_entry_code", r"[0-9]{4}"),
        ("airport_code", r"[A-Z]{3}"),
        ("flight_number", r"[A-Z0-9]{2}[0-9]{1,4}[A-Z]?"),
    ]
)
VESSEL_PATTERNS = st.sampled_from(
    [("imo_number", r"[0-9]{7}"), ("mmsi", r"[0-9]{9}"), ("flag_state", r"[A-Z]{2}")]
)
LIST_LIMITS = st.sampled_from(
    [
        ("victims", 200, R.PotentialVictim(victim_ref="v")),
        ("locations", 50, R.Location(kind=R.LOCATION_KIND_ABROAD)),
        ("goods", 50, R.GoodsAllegation(product="x")),
        ("attachments", 50, R.Attachment(uri="https://evidence.example/x")),
        ("suspects", 100, R.Suspect(name="x")),
    ]
)


def _victim(referral: R.Referral) -> R.PotentialVictim:
    return referral.victims[0] if referral.victims else referral.victims.add(victim_ref="v1")


def _location(referral: R.Referral, kind: int = R.LOCATION_KIND_US_ADDRESS) -> R.Location:
    return referral.locations.add(kind=kind)


@functools.cache
def _not_matching(pattern: str) -> st.SearchStrategy[str]:
    """Non-empty text the pattern does not match."""
    compiled = re.compile(pattern)
    return ANY_TEXT.filter(lambda s: bool(s) and not compiled.fullmatch(s))


@functools.cache
def _too_long(limit: int) -> st.SearchStrategy[str]:
    return huge_text(limit + 1, limit + 50)


def _bad_source(draw: Draw, referral: R.Referral) -> None:
    referral.source = draw(_not_matching(r"[a-z][a-z0-9-]{1,62}"))


def _bad_reference(draw: Draw, referral: R.Referral) -> None:
    referral.source_reference = "" if draw(BOOLEANS) else draw(_too_long(128))


def _system_fields(draw: Draw, referral: R.Referral) -> None:
    if draw(BOOLEANS):
        referral.referral_id = draw(NON_EMPTY_TEXT)
    else:
        referral.received_at.CopyFrom(timestamp(draw(MOMENTS)))


def _bad_indicators(draw: Draw, referral: R.Referral) -> None:
    referral.indicators[:] = draw(BAD_INDICATOR_LISTS)


def _no_indicator_no_narrative(draw: Draw, referral: R.Referral) -> None:
    del referral.indicators[:]
    referral.narrative = ""


def _long_narrative(draw: Draw, referral: R.Referral) -> None:
    referral.narrative = draw(_too_long(20_000))


def _victim_numbers(draw: Draw, referral: R.Referral) -> None:
    victim = _victim(referral)
    if draw(BOOLEANS):
        victim.age = draw(AGES_OUT_OF_RANGE)
    else:
        victim.count = draw(COUNTS_OUT_OF_RANGE)


def _victim_patterns(draw: Draw, referral: R.Referral) -> None:
    name, pattern = draw(VICTIM_PATTERNS)
    setattr(_victim(referral), name, draw(_not_matching(pattern)))


def _victim_date_of_birth(draw: Draw, referral: R.Referral) -> None:
    _victim(referral).date_of_birth = draw(BAD_DATES_OF_BIRTH)


def _victim_email(draw: Draw, referral: R.Referral) -> None:
    _victim(referral).email = draw(BAD_EMAILS)


def _victim_needs(draw: Draw, referral: R.Referral) -> None:
    _victim(referral).needs.append(draw(unknown_enum_number(1, 7)))


def _consent(draw: Draw, referral: R.Referral) -> None:
    consent = _victim(referral).consents.add(scope=1)
    granted = draw(MOMENTS)
    consent.granted_at.CopyFrom(timestamp(granted))
    broken = draw(CONSENT_BREAKS)
    if broken == "no-expiry":
        return
    consent.expires_at.CopyFrom(timestamp(granted - timedelta(seconds=draw(SMALL_GAPS))))
    if broken == "no-grant":
        consent.ClearField("granted_at")
    elif broken == "scope":
        consent.expires_at.CopyFrom(timestamp(granted + timedelta(days=1)))
        consent.scope = draw(unknown_enum_number(1, 3))


def _location_kind(draw: Draw, referral: R.Referral) -> None:
    _location(referral, draw(unknown_enum_number(1, 6)))


def _at_sea(draw: Draw, referral: R.Referral) -> None:
    location = _location(referral, R.LOCATION_KIND_AT_SEA)
    if draw(BOOLEANS):
        location.address.street = draw(NON_EMPTY_TEXT)
        location.coordinates.latitude = 10.0


def _coordinates(draw: Draw, referral: R.Referral) -> None:
    location = _location(referral, R.LOCATION_KIND_AT_SEA)
    location.coordinates.latitude = draw(LATITUDES_OUT_OF_RANGE)
    location.coordinates.longitude = draw(LONGITUDES)


def _location_codes(draw: Draw, referral: R.Referral) -> None:
    name, pattern = draw(LOCATION_PATTERNS)
    setattr(_location(referral), name, draw(_not_matching(pattern)))


def _vessel(draw: Draw, referral: R.Referral) -> None:
    name, pattern = draw(VESSEL_PATTERNS)
    setattr(referral.vessel, name, draw(_not_matching(pattern)))


def _goods(draw: Draw, referral: R.Referral) -> None:
    goods = referral.goods.add(product="gloves")
    if draw(BOOLEANS):
        goods.hts_code = draw(_not_matching(r"[0-9]{4}(\.[0-9]{2}(\.[0-9]{2,4})?)?"))
    else:
        goods.shipment_ids.append(draw(_too_long(64)))


def _attachment(draw: Draw, referral: R.Referral) -> None:
    attachment = referral.attachments.add(media_type="image/jpeg")
    if draw(BOOLEANS):
        attachment.uri = draw(BAD_URIS)
    else:
        attachment.uri = "https://evidence.example/x"
        attachment.sha256 = draw(_not_matching(r"[0-9a-f]{64}"))


def _reporter(draw: Draw, referral: R.Referral) -> None:
    if draw(BOOLEANS):
        referral.reporter.email = draw(BAD_REPORTER_EMAILS)
    else:
        referral.reporter.phone = draw(_too_long(32))


def _too_many(draw: Draw, referral: R.Referral) -> None:
    name, limit, item = draw(LIST_LIMITS)
    repeated = getattr(referral, name)
    del repeated[:]
    repeated.extend([item] * (limit + draw(EXTRA_ITEMS)))


FIRST_SECOND, LAST_SECOND = -62_135_596_800, 253_402_300_799  # Timestamp's own valid range
ODD_SECONDS = st.one_of(
    st.sampled_from([FIRST_SECOND, LAST_SECOND, FIRST_SECOND - 1, LAST_SECOND + 1, 0, -1]),
    st.integers(INT64_MIN, FIRST_SECOND - 1),
    st.integers(LAST_SECOND + 1, INT64_MAX),
)
ODD_NANOS = st.sampled_from([0, 999_999_999, -1, 1_000_000_000, INT32_MIN, INT32_MAX])
TIMESTAMP_FIELDS = st.sampled_from(["observed_at", "granted_at", "expires_at", "withdrawn_at"])


def _odd_timestamp(draw: Draw, referral: R.Referral) -> None:
    """A timestamp at, or past, the edge of what a Timestamp can hold (seconds or nanos)."""
    which = draw(TIMESTAMP_FIELDS)
    if which == "observed_at":
        stamp = referral.observed_at
    else:
        consent = _victim(referral).consents.add(scope=1)
        consent.granted_at.seconds, consent.expires_at.seconds = 0, 86_400
        stamp = getattr(consent, which)
    stamp.seconds = draw(ODD_SECONDS)
    stamp.nanos = draw(ODD_NANOS)


def _document_kind(draw: Draw, referral: R.Referral) -> None:
    _victim(referral).documents.add(kind=draw(unknown_enum_number(0, 4, zero_is_valid=True)))


BREAKERS: tuple[Breaker, ...] = (
    _bad_source,
    _bad_reference,
    _system_fields,
    _bad_indicators,
    _no_indicator_no_narrative,
    _long_narrative,
    _victim_numbers,
    _victim_patterns,
    _victim_date_of_birth,
    _victim_email,
    _victim_needs,
    _consent,
    _location_kind,
    _at_sea,
    _coordinates,
    _location_codes,
    _vessel,
    _goods,
    _attachment,
    _reporter,
    _too_many,
    _document_kind,
)
"""Each breaks one rule of a valid referral (random text may, rarely, still satisfy it)."""


_BREAKER_CHOICES = st.sampled_from(BREAKERS)


@st.composite
def near_valid_requests(draw: Draw) -> intake_pb2.SubmitReferralRequest:
    """A valid request with exactly one field (or one cross-field rule) broken."""
    request: intake_pb2.SubmitReferralRequest = draw(valid_requests())
    breaker: Breaker = draw(_BREAKER_CHOICES)
    breaker(draw, request.referral)
    return request


# --- arbitrary messages, from the descriptor ----------------------------------------------


@functools.cache
def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Any value of the field's wire type (built once per field)."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return ANY_TEXT
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return BOOLEANS
    if kind == FieldDescriptor.TYPE_ENUM:
        return any_enum_number(tuple(v.number for v in field.enum_type.values))
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return ANY_FLOAT
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return INT64
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return INT32


@functools.cache
def _scalar_list(field: FieldDescriptor) -> st.SearchStrategy[list[Any]]:
    return st.lists(_scalar(field), max_size=4)


SET_ONE_IN_FOUR = st.integers(0, 3)
REPEATS = st.integers(0, 2)


def _fill(draw: Draw, message: Message, descriptor: Descriptor, depth: int) -> None:
    for field in descriptor.fields:
        if draw(SET_ONE_IN_FOUR) != 0:  # about a quarter of the fields are set
            continue
        if field.message_type is not None:
            if depth <= 0:
                continue
            if field.is_repeated:
                for _ in range(draw(REPEATS)):
                    _fill(draw, getattr(message, field.name).add(), field.message_type, depth - 1)
            else:
                child = getattr(message, field.name)
                child.SetInParent()
                _fill(draw, child, field.message_type, depth - 1)
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(_scalar_list(field)))
        else:
            setattr(message, field.name, draw(_scalar(field)))


def arbitrary_messages(cls: type[M], depth: int = 4) -> st.SearchStrategy[M]:
    """Messages of `cls` with every field drawn from its wire type alone, rules ignored."""

    @st.composite
    def build(draw: Draw) -> M:
        message = cls()
        _fill(draw, message, cls.DESCRIPTOR, depth)
        return message

    return build()


def arbitrary_requests() -> st.SearchStrategy[intake_pb2.SubmitReferralRequest]:
    return st.builds(
        lambda referral: intake_pb2.SubmitReferralRequest(referral=referral),
        arbitrary_messages(R.Referral),
    ) | arbitrary_messages(intake_pb2.SubmitReferralRequest)


# --- bytes on the wire ----------------------------------------------------------------------------

MUTATIONS = st.sampled_from(["truncate", "flip", "insert", "delete", "splice"])
MUTATION_COUNTS = st.integers(1, 3)
POSITIONS = st.integers(0, 2**24)
BITS = st.integers(0, 7)
FEW_BYTES = st.binary(min_size=1, max_size=8)
FEW = st.integers(1, 8)


def mutate(draw: Draw, original: bytes) -> bytes:
    """`original` truncated, bit-flipped, with bytes inserted or removed, or spliced."""
    data = bytearray(original)
    for _ in range(draw(MUTATION_COUNTS)):
        how = draw(MUTATIONS)
        at = draw(POSITIONS) % (len(data) + 1)
        if how == "truncate":
            del data[at:]
        elif how == "flip" and at < len(data):
            data[at] ^= 1 << draw(BITS)
        elif how == "insert":
            data[at:at] = draw(FEW_BYTES)
        elif how == "delete":
            del data[at : at + draw(FEW)]
        else:
            data[at:] = data[: draw(POSITIONS) % (len(data) + 1)]
    return bytes(data)


def mutated_request_bytes() -> st.SearchStrategy[bytes]:
    """Serialized valid or near-valid requests with a few byte-level mutations."""
    requests = st.one_of(valid_requests(), near_valid_requests())

    @st.composite
    def build(draw: Draw) -> bytes:
        request: intake_pb2.SubmitReferralRequest = draw(requests)
        return mutate(draw, request.SerializeToString())

    return build()


def random_request_bytes() -> st.SearchStrategy[bytes]:
    # A length-delimited field 1 (the referral) around random bytes gets past the first byte.
    return st.one_of(
        st.binary(max_size=256),
        st.binary(max_size=200).map(lambda b: b"\x0a" + bytes([len(b)]) + b if len(b) < 128 else b),
    )


@st.composite
def edge_timestamp_requests(draw: Draw) -> intake_pb2.SubmitReferralRequest:
    """A valid request with one timestamp at, or past, the edge of the Timestamp type's range:
    valid at the edge (and then it must be routable), invalid past it."""
    request: intake_pb2.SubmitReferralRequest = draw(valid_requests())
    _odd_timestamp(draw, request.referral)
    return request


def oversized_request() -> intake_pb2.SubmitReferralRequest:
    """Valid by every field rule but over the intake's 512 KiB limit (and under 4 MiB)."""
    referral = _Valid(0).referral()
    del referral.victims[:]
    for index in range(200):
        referral.victims.add(
            victim_ref=f"g{index}",
            count=3,
            description=("workers seen at the packing shed at night " * 45)[:2_000],
            safety_concerns=("the crew boss watches the gate " * 60)[:2_000],
        )
    return intake_pb2.SubmitReferralRequest(referral=referral)


def submit_inputs() -> st.SearchStrategy[intake_pb2.SubmitReferralRequest | bytes]:
    """Everything the intake can be sent: messages, or raw bytes for the transport to parse."""
    return st.one_of(
        valid_requests(),
        near_valid_requests(),
        valid_requests(),
        near_valid_requests(),
        edge_timestamp_requests(),
        arbitrary_requests(),
        mutated_request_bytes(),
        random_request_bytes(),
    )


# --- Kafka records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaRecord:
    """A record as a consumer receives it (the topic is chosen by the test)."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    kind: str
    """Which generator made it, for hypothesis' statistics."""

    @property
    def header_list(self) -> list[tuple[str, bytes | None]]:
        return list(self.headers)


CE_HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type")
OTHER_HEADERS = (
    "traceparent",
    "tracestate",
    "baggage",
    "dlq_error",
    "dlq_topic",
    "dlq_partition",
    "dlq_offset",
    "dlq_attempts",
    "dlq_redriven_from",
    "dlq_redriven_attempts",
)
HEADER_NAMES = st.one_of(st.sampled_from((*CE_HEADERS, *OTHER_HEADERS)), st.text(max_size=20))
REDRIVEN_ATTEMPTS_MAX_DIGITS = 4_000
"""Digit strings in `dlq_redriven_attempts` stay below Python's 4,300-digit limit for int():
past it `dead_letter_headers` raises (see test_record_properties' known-bug test)."""
GARBAGE_BYTES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"",
            b"\x00",
            b"\xff\xfe\xfd",
            b"\xc3\x28",
            b"2.0",
            b"1.0\x00",
            b"9" * 40,
            b"-7",
            b" 3 ",
            b"\xd9\xa3",  # ARABIC-INDIC DIGIT THREE: int() accepts it
            b"2024-02-30T00:00:00Z",
            b"9999-12-31T23:59:59.999999+23:59",
            b"0001-01-01T00:00:00-23:59",
            b"not a time",
            b"00-00000000000000000000000000000000-0000000000000000-00",
            b"00-" + b"f" * 32 + b"-" + b"f" * 16 + b"-ff",
            b"ff-zz",
            b"ctroute.",
        ]
    ),
    st.text(max_size=30).map(str.encode),
    st.integers(0, REDRIVEN_ATTEMPTS_MAX_DIGITS).map(lambda n: b"9" * n),
)
MAYBE_GARBAGE = st.one_of(st.none(), GARBAGE_BYTES)
RANDOM_HEADERS = st.lists(st.tuples(HEADER_NAMES, MAYBE_GARBAGE), max_size=8)
EXTRA_HEADERS = st.lists(st.tuples(st.sampled_from(OTHER_HEADERS), GARBAGE_BYTES), max_size=4)
RANDOM_VALUES = st.one_of(st.none(), st.binary(max_size=300))
SOME_BYTES = st.binary(min_size=1, max_size=200)
EVENT_IDS = st.one_of(st.uuids().map(str), chars(DIGITS + "abcdef", 8).map("evt-".__add__))
KEYS = st.one_of(st.none(), st.binary(max_size=24), st.text(max_size=24).map(str.encode))
HEADER_BREAKS = st.sampled_from(["drop", "null", "repeat", "rename", "none", "extra", "shuffle"])
VALUE_BREAKS = st.sampled_from(["truncate", "mutate", "append", "none", "empty", "random"])
CE_SUBSETS = st.sets(st.sampled_from(CE_HEADERS), min_size=1)


def _contract_type_names() -> list[str]:
    """Full names of every message, enum and service in the contract."""
    names: list[str] = []
    for module in contract.load():
        file = module.DESCRIPTOR
        names.extend(m.full_name for m in file.message_types_by_name.values())
        names.extend(e.full_name for e in file.enum_types_by_name.values())
        names.extend(s.full_name for s in file.services_by_name.values())
    return sorted(names)


WRONG_TYPES = st.one_of(
    st.sampled_from(_contract_type_names()),
    st.sampled_from(
        [
            "ctroute.",
            "ctroute.referral.v1",
            "ctroute.referral.v1.ReferralSubmitted ",
            "ctroute.referral.v1.ReferralSubmitted\x00",
            "ctroute.referral.v1.ReferralSubmitted.Nested",
            "ctroute.referral.v1.Referral.victims",
            "ctroute.options.v1.sensitivity",
            "google.protobuf.Timestamp",
            "com.example.orders.v1.OrderPlaced",
            "",
        ]
    ),
    SHORT_TEXT.map("ctroute.".__add__),
)


def ce_headers(event_type: str, event_id: str, moment: datetime) -> list[tuple[str, bytes | None]]:
    """Correct CloudEvents headers for an event type (no clock, no uuid: deterministic)."""
    return [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", event_id.encode()),
        ("ce_source", b"tests/fuzz"),
        ("ce_type", event_type.encode()),
        ("ce_time", moment.isoformat().encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]


@st.composite
def routed_referrals(draw: Draw) -> R.Referral:
    """A referral as the intake publishes it: valid, with its id and received_at."""
    referral: R.Referral = draw(valid_referrals())
    referral.referral_id = referral_id_for(referral.source, referral.source_reference)
    referral.received_at.CopyFrom(timestamp(draw(MOMENTS)))
    return referral


def submitted_topic_events() -> st.SearchStrategy[Message]:
    """Events of the kinds the submitted topic carries, well-formed or with arbitrary content."""
    referrals = st.one_of(routed_referrals(), routed_referrals(), arbitrary_messages(R.Referral))
    return st.one_of(
        st.builds(
            lambda r, by: lifecycle_pb2.ReferralSubmitted(referral=r, submitted_by=by),
            referrals,
            SHORT_TEXT,
        ),
        st.builds(
            lambda r, why: lifecycle_pb2.ReferralAmended(referral=r, reason=why),
            referrals,
            SHORT_TEXT,
        ),
        st.builds(
            lambda rid, why: lifecycle_pb2.ReferralWithdrawn(referral_id=rid, reason=why),
            SHORT_TEXT,
            SHORT_TEXT,
        ),
        arbitrary_messages(lifecycle_pb2.ReferralSubmitted),
    )


PRIORITY_NUMBERS = tuple(v for _, v in lifecycle_pb2.Priority.items())
KIND_NUMBERS = tuple(v for _, v in delivery_pb2.DeliveryKind.items())
RULE_IDS = st.lists(st.sampled_from(["R0", "R1", "R7"]), max_size=2)
DELIVERY_IDS = chars(DIGITS + "abcdef", 20).map("dlv-".__add__)
VALID_PRIORITIES = st.sampled_from(PRIORITY_NUMBERS[1:])
VALID_KINDS = st.sampled_from(KIND_NUMBERS[1:])
DELIVERY_PARTS = st.sampled_from(["partner", "priority", "kind", "referral"])


@functools.cache
def deliveries_for(partner: str) -> st.SearchStrategy[Message]:
    """PartnerDeliveries on `partner`'s inbox: as the router makes them, or with one part wrong
    (another or an invalid addressee, unknown enum numbers, an arbitrary referral), or arbitrary.
    """
    addressees = st.one_of(st.sampled_from(PARTNERS), SHORT_TEXT)
    priorities = any_enum_number(PRIORITY_NUMBERS)
    kinds = any_enum_number(KIND_NUMBERS)
    referrals = arbitrary_messages(R.Referral, depth=3)

    @st.composite
    def build(draw: Draw, *, broken: bool) -> delivery_pb2.PartnerDelivery:
        delivery = delivery_pb2.PartnerDelivery(
            delivery_id=draw(DELIVERY_IDS),
            partner=partner,
            priority=draw(VALID_PRIORITIES),
            kind=draw(VALID_KINDS),
            rule_ids=draw(RULE_IDS),
            policy_version="0123456789ab",
        )
        delivery.referral.CopyFrom(draw(routed_referrals()))
        delivery.delivered_at.CopyFrom(timestamp(draw(MOMENTS)))
        if broken:
            part = draw(DELIVERY_PARTS)
            if part == "partner":
                delivery.partner = draw(addressees)
            elif part == "priority":
                delivery.priority = draw(priorities)
            elif part == "kind":
                delivery.kind = draw(kinds)
            else:
                delivery.referral.CopyFrom(draw(referrals))
        return delivery

    return st.one_of(
        build(broken=False),
        build(broken=False),
        build(broken=True),
        arbitrary_messages(delivery_pb2.PartnerDelivery),
    )


def _well_formed(draw: Draw, events: st.SearchStrategy[Message]) -> KafkaRecord:
    event: Message = draw(events)
    headers = ce_headers(event.DESCRIPTOR.full_name, draw(EVENT_IDS), draw(MOMENTS))
    return KafkaRecord(draw(KEYS), event.SerializeToString(), tuple(headers), "well-formed")


def _random(draw: Draw, events: st.SearchStrategy[Message]) -> KafkaRecord:
    headers = draw(RANDOM_HEADERS)
    return KafkaRecord(draw(KEYS), draw(RANDOM_VALUES), tuple(headers), "random")


def _garbage_header_values(draw: Draw, events: st.SearchStrategy[Message]) -> KafkaRecord:
    record = _well_formed(draw, events)
    broken = draw(CE_SUBSETS)
    headers = [(k, draw(GARBAGE_BYTES) if k in broken else v) for k, v in record.headers]
    return KafkaRecord(record.key, record.value, tuple(headers), "garbage-header-values")


def _broken_headers(draw: Draw, events: st.SearchStrategy[Message]) -> KafkaRecord:
    record = _well_formed(draw, events)
    headers = list(record.headers)
    how = draw(HEADER_BREAKS)
    at = draw(POSITIONS) % len(headers)
    name = headers[at][0]
    if how == "drop":
        del headers[at]
    elif how == "null":
        headers[at] = (name, None)
    elif how == "repeat":
        headers.append((name, draw(GARBAGE_BYTES)))
    elif how == "rename":
        renamed = (name.upper(), name + " ", "ce-" + name[3:], "")
        headers[at] = (renamed[draw(POSITIONS) % len(renamed)], headers[at][1])
    elif how == "none":
        headers = []
    elif how == "extra":
        headers.extend(draw(EXTRA_HEADERS))
    else:
        headers = headers[at:] + headers[:at]
    return KafkaRecord(record.key, record.value, tuple(headers), f"broken-headers-{how}")


def _wrong_type(draw: Draw, events: st.SearchStrategy[Message]) -> KafkaRecord:
    record = _well_formed(draw, events)
    wrong: str = draw(WRONG_TYPES)
    headers = [(k, wrong.encode() if k == "ce_type" else v) for k, v in record.headers]
    return KafkaRecord(record.key, record.value, tuple(headers), "wrong-ce-type")


def _corrupt_value(draw: Draw, events: st.SearchStrategy[Message]) -> KafkaRecord:
    record = _well_formed(draw, events)
    value = record.value or b""
    how = draw(VALUE_BREAKS)
    corrupted: bytes | None
    if how == "truncate":
        corrupted = value[: draw(POSITIONS) % max(len(value), 1)]
    elif how == "mutate":
        corrupted = mutate(draw, value)
    elif how == "append":
        corrupted = value + draw(FEW_BYTES)
    elif how == "none":
        corrupted = None
    elif how == "empty":
        corrupted = b""
    else:
        corrupted = draw(SOME_BYTES)
    return KafkaRecord(record.key, corrupted, record.headers, f"corrupt-value-{how}")


_BAD_KINDS = (
    _random,
    _garbage_header_values,
    _broken_headers,
    _broken_headers,
    _wrong_type,
    _corrupt_value,
    _corrupt_value,
)
_BAD_CHOICES = st.sampled_from(_BAD_KINDS)
_ANY_CHOICES = st.sampled_from((*_BAD_KINDS, _well_formed, _well_formed))


def kafka_records(
    events: st.SearchStrategy[Message], *, well_formed: bool = True
) -> st.SearchStrategy[KafkaRecord]:
    """Records of every bad kind around `events` (and well-formed ones unless told not to)."""
    choices = _ANY_CHOICES if well_formed else _BAD_CHOICES

    @st.composite
    def build(draw: Draw) -> KafkaRecord:
        make: Callable[[Draw, st.SearchStrategy[Message]], KafkaRecord] = draw(choices)
        return make(draw, events)

    return build()


def submitted_records(*, well_formed: bool = True) -> st.SearchStrategy[KafkaRecord]:
    """Records as the router finds them on referrals.submitted."""
    return kafka_records(submitted_topic_events(), well_formed=well_formed)


INBOX_TOPICS = [topics.inbox(partner) for partner in PARTNERS]


def partner_records(
    partners: list[str] | None = None, *, well_formed: bool = True
) -> st.SearchStrategy[tuple[str, KafkaRecord]]:
    """(inbox topic, record) as a downstream service finds them on a partner's inbox."""
    by_partner = {
        partner: kafka_records(deliveries_for(partner), well_formed=well_formed)
        for partner in partners or PARTNERS
    }

    choices = st.sampled_from(sorted(by_partner))

    @st.composite
    def build(draw: Draw) -> tuple[str, KafkaRecord]:
        partner: str = draw(choices)
        return topics.inbox(partner), draw(by_partner[partner])

    return build()


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings of every fuzz test: `examples` inputs, the same ones on every run
    (CI is deterministic), no example database, no health check that slow inputs would fail."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )
