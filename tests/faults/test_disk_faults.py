"""A worker's data directory on a small filesystem that fills under load, then frees: run and checked
like every fault (docs/RELIABILITY.md, "Full disk"). Needs root, for the mount."""

from __future__ import annotations

import pytest

from tests.faults import scenarios
from tests.faults.disk import SmallDisk, full_disk
from tests.faults.test_faults import _assert_clean, _prepare, deployment  # noqa: F401 (a fixture)


@pytest.fixture
def small_disk(deployment):  # noqa: F811 (the fixture imported above)
    """Worker `a`'s data directory on a tmpfs of its own; its workers stopped before the unmount."""
    disk = SmallDisk(deployment.data_dir("a"))
    disk.mount()
    yield disk
    deployment.stop_all()
    disk.close()


def test_full_disk(deployment, small_disk):  # noqa: F811
    _prepare(deployment)
    duration, full = (120, 60) if scenarios.FULL else (50, 20)
    outcome = full_disk(deployment, small_disk, duration, full)
    _assert_clean(outcome)
