"""Fault injection under mixed load, each run ending with the checker. `make test` runs the short
forms; `make faults` sets GEODISPATCH_FAULTS_FULL=1 for the long ones."""

from __future__ import annotations

import os
import signal

import pytest

from tests.faults import scenarios


@pytest.fixture
def deployment(tmp_path):
    from tests.integration.harness import Deployment

    dep = Deployment(workdir=tmp_path)
    yield dep
    dep.cleanup()


def _prepare(dep):
    scenarios.fault_env(dep)
    dep.apply_topics()


def _assert_clean(outcome: scenarios.Outcome) -> None:
    scenarios.RESULTS.append(outcome)
    print("\n" + outcome.table())
    assert outcome.load.orders, "the load generator sent no orders"
    assert outcome.report.ok, outcome.report.explain()
    assert not outcome.report.lost
    # Dead letters account for a request, but a fault must not turn the service into a dead-letter
    # queue: at least 90% of the orders get a real answer.
    answered = outcome.report.requests - outcome.report.dead_lettered
    assert answered >= 0.9 * outcome.report.requests, f"only {answered} of {outcome.report.requests} answered"


def test_worker_kill(deployment):
    _prepare(deployment)
    duration, every = (120, 30) if scenarios.FULL else (24, 10)
    _assert_clean(scenarios.worker_kill(deployment, duration, every))


def test_assignments_process_kill(deployment):
    _prepare(deployment)
    duration, every = (90, 20) if scenarios.FULL else (24, 8)
    outcome = scenarios.assignments_kill(deployment, duration, every)
    _assert_clean(outcome)
    assert outcome.extra["sessions process alive"]
    assert outcome.extra["pings applied by it"] >= 0.9 * outcome.load.pings_sent


def test_zombie_worker(deployment):
    _prepare(deployment)
    duration, pause = (60, 15) if scenarios.FULL else (24, 10)
    _assert_clean(scenarios.zombie(deployment, duration, pause))


def _started(server):
    """A fault test's own server, started for the test and closed after it."""
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_broker(tmp_path):
    from tests.faults.servers import Broker

    yield from _started(Broker(tmp_path))


@pytest.fixture
def own_redis(tmp_path):
    from tests.faults.servers import RedisServer

    yield from _started(RedisServer(tmp_path))


# The short form restarts the broker the hard way only; the long one does both.
BROKER_SIGNALS = ["SIGTERM", "SIGKILL"] if scenarios.FULL else ["SIGKILL"]


@pytest.mark.parametrize("sig", BROKER_SIGNALS)
def test_broker_restart(own_broker, deployment, sig):  # the workers stop before their broker
    deployment.bootstrap = own_broker.bootstrap
    _prepare(deployment)
    duration = 90 if scenarios.FULL else 21
    try:
        outcome = scenarios.broker_restart(deployment, own_broker, duration, signal.Signals[sig])
    except AssertionError:
        print(own_broker.log_tail())
        raise
    _assert_clean(outcome)


def test_redis_restart(own_redis, deployment):
    deployment.redis_url = own_redis.url
    _prepare(deployment)
    duration, wipes = (90, 3) if scenarios.FULL else (30, 1)
    _assert_clean(scenarios.redis_restart(deployment, own_redis, duration, wipes))


# The stated bound: with a 6 s group session timeout, a join or a graceful leave must not hold any
# request longer than this (one rebalance plus the table recovery and index rebuild that follow).
CHURN_MAX_LATENCY_S = 30.0


def test_rebalance_churn(deployment):
    _prepare(deployment)
    duration, cycle = (180, 30) if scenarios.FULL else (48, 16)
    outcome = scenarios.rebalance_churn(deployment, duration, cycle)
    _assert_clean(outcome)
    latency = outcome.extra["max answer latency (s)"]
    assert latency <= CHURN_MAX_LATENCY_S, f"a request waited {latency}s under churn (bound {CHURN_MAX_LATENCY_S}s)"


@pytest.fixture
def own_cluster(tmp_path):
    from tests.faults.servers import Cluster

    yield from _started(Cluster(tmp_path))


def test_cluster_broker_kill(own_cluster, deployment):
    scenarios.on_cluster(deployment, own_cluster)
    _prepare(deployment)
    _assert_clean(scenarios.cluster_broker_kill(deployment, own_cluster, 90 if scenarios.FULL else 36))


# Replicas each reservation and decision waits for in the Redis primary kill; 0 measures what the
# failover loses without the wait (docs/RELIABILITY.md), and the checker then reports it as a failure.
PRIMARY_KILL_WAIT_REPLICAS = int(os.environ.get("GEODISPATCH_FAULTS_WAIT_REPLICAS", "1"))


def test_redis_primary_kill(own_cluster, deployment):
    scenarios.on_cluster(deployment, own_cluster, wait_replicas=PRIMARY_KILL_WAIT_REPLICAS)
    _prepare(deployment)
    _assert_clean(scenarios.redis_primary_kill(deployment, own_cluster, 90 if scenarios.FULL else 36))
