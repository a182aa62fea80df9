"""Keeps each key's records where its state lives: a record on another partition than its key's
is written again to the right one and skipped here, so it is never processed in two places."""

from __future__ import annotations

from aiokafka.partitioner import murmur2

REROUTED_FROM = "geodispatch.rerouted_from"


def key_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (Java client, aiokafka, kafkajs): murmur2 of the key bytes."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def misrouted(key: bytes | None, partition: int, partitions: int) -> int | None:
    """The partition the record should be on, or None when it is already there (or has no key)."""
    if not key:
        return None
    expected = key_partition(key, partitions)
    return None if expected == partition else expected
