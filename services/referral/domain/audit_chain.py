"""The accountability record: an append-only log whose entries are chained by hashes.

Every release of data to a partner and every status change is one entry. Each entry's hash
covers its content and the previous entry's hash, so editing, inserting or deleting an entry
breaks the chain at that point, and `verify` names the first entry where it breaks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    """One recorded fact, with its place in the chain."""

    seq: int
    event_id: str
    recorded_at: str
    kind: str
    referral_id: str
    body: dict[str, Any]
    prev_hash: str
    hash: str


def entry_hash(
    seq: int,
    event_id: str,
    recorded_at: str,
    kind: str,
    referral_id: str,
    body: dict[str, Any],
    prev_hash: str,
) -> str:
    """The hash of an entry: canonical JSON of everything in it, chained to the previous one."""
    canonical = json.dumps(
        [seq, event_id, recorded_at, kind, referral_id, body, prev_hash],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a chain."""

    entries: int
    intact: bool
    problem: str = ""
    at_seq: int | None = None


def verify(entries: Iterable[AuditEntry]) -> Verdict:
    """Walk the chain from the start; report the first entry that was edited, inserted or
    removed. (Removing the newest entries leaves a shorter valid chain: compare the head hash
    with one recorded elsewhere to catch that.)"""
    expected_seq = 1
    prev = GENESIS
    count = 0
    for entry in entries:
        count += 1
        if entry.seq != expected_seq:
            what = "missing" if entry.seq > expected_seq else "duplicated or out of order"
            return Verdict(count, False, f"entry {expected_seq} is {what}", entry.seq)
        if entry.prev_hash != prev:
            return Verdict(
                count,
                False,
                f"entry {entry.seq} does not follow entry {entry.seq - 1}: "
                "an entry was inserted or removed before it",
                entry.seq,
            )
        recomputed = entry_hash(
            entry.seq,
            entry.event_id,
            entry.recorded_at,
            entry.kind,
            entry.referral_id,
            entry.body,
            entry.prev_hash,
        )
        if recomputed != entry.hash:
            return Verdict(count, False, f"entry {entry.seq} was edited", entry.seq)
        prev = entry.hash
        expected_seq += 1
    return Verdict(count, True)
