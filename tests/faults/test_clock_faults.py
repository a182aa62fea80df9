"""A worker's wall clock stepped forward and back while it holds partitions (tests/faults/clock.py), on
a broker and Redis of the test's own, ending with the checker: `make test` runs the short form, `make
faults` (GEODISPATCH_FAULTS_FULL=1) the long one. Fence tokens come from the broker, not from clocks,
so the worker ahead wins nothing: the restore after the fault finds every session as it was."""

from __future__ import annotations

import pytest

from tests.faults import scenarios
from tests.faults.clock import SteppedClock, clock_step
from tests.faults.test_faults import _assert_clean, _prepare, deployment, own_broker, own_redis  # noqa: F401 (fixtures)


@pytest.fixture
def stepped_clock(tmp_path):
    return SteppedClock(tmp_path / "faketime.rc")


def test_clock_stepped_forward_and_back(own_broker, own_redis, deployment, stepped_clock):  # noqa: F811
    deployment.bootstrap, deployment.redis_url = own_broker.bootstrap, own_redis.url
    _prepare(deployment)
    duration, hold, cycles = (120, 15, 3) if scenarios.FULL else (24, 10, 1)
    outcome = clock_step(deployment, stepped_clock, duration, hold, cycles)
    _assert_clean(outcome)
    # The skewed worker's tokens beat nobody's: no write of the owner after it was refused.
    assert outcome.extra["fenced writes (index)"] == 0, outcome.table()
    assert outcome.extra["fenced writes (changelog)"] == 0, outcome.table()
