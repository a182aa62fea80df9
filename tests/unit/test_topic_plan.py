"""The topic plan asks the broker for durable writes wherever it can have them: with three replicas or
more, a write is acknowledged only once a majority of them hold it."""

from __future__ import annotations

import pytest

from infra.topics import TopicNames, min_insync_replicas, plan


@pytest.mark.parametrize(("replication", "min_insync"), [(1, 1), (2, 1), (3, 2), (5, 3)])
def test_every_topic_wants_a_majority_of_three_or_more_replicas_to_acknowledge(replication, min_insync):
    assert min_insync_replicas(replication) == min_insync
    for spec in plan(TopicNames("t."), ("4_-7",), 4, replication):
        assert spec.replication == replication
        assert spec.configs["min.insync.replicas"] == str(min_insync), spec.name
