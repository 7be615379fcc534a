"""Keyed state kept in memory and made durable in compacted changelog topics.

A stateful consumer (the router) keeps what it must remember between records in tables whose
every write is also a record on a compacted changelog topic. After a crash, or when a partition
moves to another instance, the table is rebuilt by reading the changelog: the memory follows the
partition it belongs to.

Two kinds of table:

- ``PartitionedTable``: partitioned like the input topic. The state of the records of input
  partition *p* is written to changelog partition *p*, and an instance holds only the partitions
  it is assigned. On every assignment it reads each assigned changelog partition from where its
  memory of that partition ends to the end, so whatever another instance wrote while it held the
  partition is applied before a record of it is processed.
- ``GlobalTable``: every instance holds all of it and keeps reading every changelog partition
  (``catch_up``). Values are merged, not replaced, so an instance's own writes read back later,
  or two instances' writes crossing, never lose anything.

Writes are buffered (``take_writes``): the consumer sends them only after the records they
describe are acknowledged by Kafka, so the changelog never remembers work whose output was lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

Merge = Callable[[bytes, bytes | None, bytes], bytes]
"""(key, value held, value written or read) -> the value to hold."""


@dataclass(frozen=True)
class ChangelogWrite:
    """One table write to send to its changelog topic."""

    topic: str
    partition: int
    key: bytes
    value: bytes


class PartitionedTable:
    """A key -> value table partitioned like its input topic, restored per partition."""

    def __init__(self, changelog_topic: str) -> None:
        self.changelog_topic = changelog_topic
        self._values: dict[bytes, bytes] = {}
        self._keys_of: dict[int, set[bytes]] = {}
        self._read_up_to: dict[int, int] = {}
        self._writes: list[ChangelogWrite] = []
        self.partition: int | None = None
        """The input partition of the record being processed: where writes belong."""

    def get(self, key: bytes) -> bytes | None:
        return self._values.get(key)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if self.partition is None:
            raise RuntimeError(f"write to {self.changelog_topic} outside a record's processing")
        self._store(self.partition, key, value)
        self._writes.append(ChangelogWrite(self.changelog_topic, self.partition, key, value))

    def take_writes(self) -> list[ChangelogWrite]:
        writes, self._writes = self._writes, []
        return writes

    def held_partitions(self) -> set[int]:
        return set(self._keys_of)

    def read_position(self, partition: int) -> int:
        """The changelog offset this table's memory of ``partition`` is read up to."""
        return self._read_up_to.get(partition, 0)

    def apply(self, partition: int, key: bytes, value: bytes, next_offset: int) -> None:
        """A changelog record read back (restore)."""
        self._store(partition, key, value)
        self._read_up_to[partition] = next_offset

    def mark_read(self, partition: int, next_offset: int) -> None:
        self._keys_of.setdefault(partition, set())
        self._read_up_to[partition] = max(self._read_up_to.get(partition, 0), next_offset)

    def forget(self, partition: int) -> None:
        """Drop a partition this instance no longer holds."""
        for key in self._keys_of.pop(partition, set()):
            self._values.pop(key, None)
        self._read_up_to.pop(partition, None)

    def _store(self, partition: int, key: bytes, value: bytes) -> None:
        self._values[key] = value
        self._keys_of.setdefault(partition, set()).add(key)


class GlobalTable:
    """A key -> value table every instance holds whole; concurrent writes are merged."""

    def __init__(self, changelog_topic: str, merge: Merge) -> None:
        self.changelog_topic = changelog_topic
        self._merge = merge
        self._values: dict[bytes, bytes] = {}
        self._writes: list[ChangelogWrite] = []
        self.partition = 0
        """The changelog partition writes go to (the input record's: spreads the load)."""

    def get(self, key: bytes) -> bytes | None:
        return self._values.get(key)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._values[key] = self._merge(key, self._values.get(key), value)
        self._writes.append(ChangelogWrite(self.changelog_topic, self.partition, key, value))

    def take_writes(self) -> list[ChangelogWrite]:
        writes, self._writes = self._writes, []
        return writes

    def apply(self, key: bytes, value: bytes) -> None:
        self._values[key] = self._merge(key, self._values.get(key), value)


class ChangelogReader:
    """Reads changelog partitions into tables, with its own consumer outside any group."""

    def __init__(self, consumer: KafkaConsumer, timeout_s: float = 120.0) -> None:
        self._consumer = consumer
        self._timeout_s = timeout_s

    def restore(self, tables: Iterable[PartitionedTable], partitions: Iterable[int]) -> int:
        """Bring each table's memory of ``partitions`` up to the end of its changelog.

        Returns the number of records applied. Raises TimeoutError if the changelog cannot be
        read in time: processing records with an incomplete memory could deliver twice or
        release to the wrong partner, so the caller must not go on.
        """
        wanted = sorted(set(partitions))
        by_topic = {table.changelog_topic: table for table in tables}
        assignment = [TopicPartition(topic, p) for topic in by_topic for p in wanted]
        if not assignment:
            return 0
        self._consumer.assign(assignment)
        ends = self._consumer.end_offsets(assignment)
        for tp in assignment:
            self._consumer.seek(tp, by_topic[tp.topic].read_position(tp.partition))
        applied = self._read_until(
            ends,
            lambda record: by_topic[record.topic].apply(
                record.partition, record.key, record.value, record.offset + 1
            ),
        )
        for tp, end in ends.items():
            by_topic[tp.topic].mark_read(tp.partition, end)
        return applied

    def follow(self, table: GlobalTable) -> None:
        """Start reading every partition of a global table's changelog from the beginning."""
        partitions = self._consumer.partitions_for_topic(table.changelog_topic) or set()
        assignment = [TopicPartition(table.changelog_topic, p) for p in sorted(partitions)]
        self._consumer.assign(assignment)
        self._consumer.seek_to_beginning(*assignment)

    def restore_global(self, table: GlobalTable) -> int:
        """Read a followed global table's changelog up to its current end."""
        ends = self._consumer.end_offsets(list(self._consumer.assignment()))
        return self._read_until(ends, lambda record: table.apply(record.key, record.value))

    def catch_up(self, table: GlobalTable, wait_ms: int = 0) -> int:
        """Apply whatever the followed changelog has gained (waiting up to ``wait_ms`` for it)."""
        applied = 0
        for records in self._consumer.poll(timeout_ms=wait_ms).values():
            for record in records:
                if record.key is not None and record.value is not None:
                    table.apply(record.key, record.value)
                    applied += 1
        return applied

    def close(self) -> None:
        self._consumer.close(autocommit=False)

    def _read_until(self, ends: dict[TopicPartition, int], apply: Callable[..., None]) -> int:
        deadline = time.monotonic() + self._timeout_s
        applied = 0
        while any(self._consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                behind = [tp for tp, end in ends.items() if self._consumer.position(tp) < end]
                raise TimeoutError(f"changelog not read to its end in time: {behind}")
            for records in self._consumer.poll(timeout_ms=500).values():
                for record in records:
                    # A null value would be a deletion; the tables never write one.
                    if record.key is not None and record.value is not None:
                        apply(record)
                        applied += 1
        return applied
