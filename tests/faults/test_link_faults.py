"""Link faults under mixed load (tests/faults/link_scenarios.py), each run ending with the checker:
`make test` runs the short forms, `make faults` (GEODISPATCH_FAULTS_FULL=1) the long ones."""

from __future__ import annotations

import pytest

from tests.faults import link_scenarios as links
from tests.faults import scenarios
from tests.faults.test_faults import _assert_clean

FULL = scenarios.FULL


@pytest.fixture
def lab(tmp_path):
    with links.lab(tmp_path) as own:
        yield own


def test_redis_cut_of_one_worker(lab):
    duration, cut = (90, 20) if FULL else (30, 10)
    _assert_clean(links.one_link_cut(lab, links.REDIS, duration, cut))


def test_kafka_cut_of_one_worker(lab):
    duration, cut = (90, 20) if FULL else (30, 10)
    _assert_clean(links.one_link_cut(lab, links.KAFKA, duration, cut))


def test_latency_then_resets_on_every_link(lab):
    duration, slow, reset = (90, 30, 10) if FULL else (30, 10, 4)
    _assert_clean(links.latency_then_reset(lab, duration, slow, reset))


def test_broker_restart_during_redis_cut(lab):
    _assert_clean(links.broker_restart_during_redis_cut(lab, 90 if FULL else 24))


def test_churn_under_latency(lab):
    duration, cycle = (120, 30) if FULL else (40, 16)
    _assert_clean(links.churn_under_latency(lab, duration, cycle))
