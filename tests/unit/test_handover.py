"""Which request offsets a group takes over from the other shape's group (streams.handover)."""

from __future__ import annotations

from aiokafka import TopicPartition

from streams.handover import further_on

A, B, C = (TopicPartition("driver_assignment.requests.0_0", p) for p in range(3))


def test_only_partitions_the_other_group_got_further_with_are_taken():
    own = {A: 10, B: 7}
    other = {A: 4, B: 9, C: 3}
    assert further_on(own, other) == {B: 9, C: 3}


def test_a_group_ahead_everywhere_takes_nothing():
    assert further_on({A: 5, B: 5}, {A: 5, B: 1}) == {}
    assert further_on({A: 5}, {}) == {}
