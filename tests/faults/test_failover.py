"""Failover time under each group setup: a worker SIGKILLed under load, and the time until its
partitions' requests are answered again (docs/RELIABILITY.md, "Failover time"). The long form measures
every setup, GEODISPATCH_FAILOVER_KILLS times each (1 by default: a setup's start and drain cost more
than a kill, and `make faults` must stay within its bound); the short one the static membership's
restart, once."""

from __future__ import annotations

import os

import pytest

from tests.faults import scenarios
from tests.faults.failover import SETUPS, failover
from tests.faults.test_faults import _assert_clean, _prepare, deployment  # noqa: F401 (a fixture)


@pytest.mark.parametrize("setup", list(SETUPS) if scenarios.FULL else ["static"])
def test_failover(deployment, setup):  # noqa: F811 (the fixture imported above)
    _prepare(deployment)
    group = SETUPS[setup]
    kills = int(os.environ.get("GEODISPATCH_FAILOVER_KILLS", "1")) if scenarios.FULL else 1
    outcome = failover(deployment, group, kills)
    _assert_clean(outcome)
    if group.static and group.restarted:
        # The point of static membership: a worker back under its id gets its partitions before the
        # session timeout would have moved them.
        assert outcome.extra["failover max (s)"] < group.session_timeout_s, outcome.extra
