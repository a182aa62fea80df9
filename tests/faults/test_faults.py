"""Fault injection under mixed load, each run ending with the checker. `make test` runs the short
forms; `make faults` sets GEODISPATCH_FAULTS_FULL=1 for the long ones."""

from __future__ import annotations

import pytest

from tests.faults import scenarios


@pytest.fixture
def deployment(tmp_path):
    from tests.integration.harness import Deployment

    dep = Deployment(tmp=tmp_path)
    yield dep
    dep.stop_all()


def _prepare(dep):
    scenarios.fault_env(dep)
    dep.apply_topics()


def _assert_clean(outcome: scenarios.Outcome) -> None:
    print("\n" + outcome.table())
    assert outcome.load.orders, "the load generator sent no orders"
    assert outcome.report.ok, outcome.report.explain()
    assert not outcome.report.lost


def test_worker_kill(deployment):
    _prepare(deployment)
    duration, every = (120, 30) if scenarios.FULL else (24, 10)
    _assert_clean(scenarios.worker_kill(deployment, duration, every))


def test_zombie_worker(deployment):
    _prepare(deployment)
    duration, pause = (60, 15) if scenarios.FULL else (24, 10)
    _assert_clean(scenarios.zombie(deployment, duration, pause))
