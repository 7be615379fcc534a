"""The router's tables without Kafka: what they remember, what they hand to the changelog, what
a partition move drops, and how the correlation index merges values read back."""

from __future__ import annotations

import pytest

from plumbing.changelog import ChangelogWrite, GlobalTable, PartitionedTable
from referral.entrypoints.router_app import (
    TableCorrelationIndex,
    TableRoutedRevisions,
    merge_correlation,
)
from referral.router import Correlated


def test_a_write_is_remembered_at_once_and_handed_to_its_changelog_partition() -> None:
    table = PartitionedTable("routed")
    table.partition = 2
    table[b"ref-1"] = b"original"

    assert table.get(b"ref-1") == b"original"
    assert table.take_writes() == [ChangelogWrite("routed", 2, b"ref-1", b"original")]
    assert table.take_writes() == [], "writes are handed over once"


def test_a_write_outside_a_record_is_refused() -> None:
    with pytest.raises(RuntimeError, match="outside a record"):
        PartitionedTable("routed")[b"ref-1"] = b"original"


def test_forgetting_a_partition_drops_only_its_keys_and_read_position() -> None:
    table = PartitionedTable("state")
    table.apply(0, b"ref-a", b"A", next_offset=5)
    table.apply(1, b"ref-b", b"B", next_offset=9)

    table.forget(0)

    assert table.get(b"ref-a") is None
    assert table.get(b"ref-b") == b"B"
    assert table.held_partitions() == {1}
    assert table.read_position(0) == 0, "a partition held again is read from the start"
    assert table.read_position(1) == 9


def test_an_empty_partition_read_to_its_end_counts_as_held() -> None:
    table = PartitionedTable("state")
    table.mark_read(2, 0)
    assert table.held_partitions() == {2}


def test_routed_revisions_accumulate_per_referral() -> None:
    table = PartitionedTable("routed")
    table.partition = 0
    routed = TableRoutedRevisions(table)

    routed.remember("ref-1", "original")
    routed.remember("ref-1", "evt-2")

    assert routed.seen("ref-1", "original")
    assert routed.seen("ref-1", "evt-2")
    assert not routed.seen("ref-1", "withdrawn")
    assert not routed.seen("ref-2", "original")


@pytest.mark.parametrize(
    ("key", "held", "written", "merged"),
    [
        (b"fp:x", None, b"ref-2", b"ref-2"),
        (b"fp:x", b"ref-1\nref-3", b"ref-2", b"ref-1\nref-2\nref-3"),
        (b"fp:x", b"ref-1\nref-2", b"ref-1", b"ref-1\nref-2"),
        (b"rcp:ref-1", b"cbp,hsi", b"ccht,hsi", b"cbp,ccht,hsi"),
        (b"rcp:ref-1", None, b"", b""),
    ],
)
def test_correlation_values_merge_as_unions(
    key: bytes, held: bytes | None, written: bytes, merged: bytes
) -> None:
    assert merge_correlation(key, held, written) == merged


def test_an_old_correlation_value_read_back_after_a_newer_one_loses_nothing() -> None:
    table = GlobalTable("correlation", merge_correlation)
    index = TableCorrelationIndex(table)
    index.learn(Correlated("ref-1", frozenset({"phone"}), frozenset({"hsi"})))
    index.learn(Correlated("ref-2", frozenset({"phone"}), frozenset({"cbp"})))
    first_write = table.take_writes()[0]

    # Another instance's view, or this one's own first write, arriving late.
    table.apply(first_write.key, first_write.value)

    assert index.referrals_sharing(frozenset({"phone"})) == {"ref-1", "ref-2"}
    assert index.recipients_of("ref-2") == frozenset({"cbp"})


def test_the_global_table_writes_only_what_it_learned() -> None:
    table = GlobalTable("correlation", merge_correlation)
    table.partition = 1
    index = TableCorrelationIndex(table)
    index.learn(Correlated("ref-1", frozenset({"imo"}), frozenset({"uscg"})))
    table.take_writes()

    index.learn(Correlated("ref-1", frozenset({"imo"}), frozenset({"uscg"})))

    assert table.take_writes() == [ChangelogWrite("correlation", 1, b"rcp:ref-1", b"uscg")], (
        "a fingerprint already known is not written again"
    )
