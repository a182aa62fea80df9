"""Upgrading from the last release: its worker (its commit, checked out with `git worktree`) runs on
real data, an operator applies this checkout's topic plan and replaces it with this checkout's worker,
and no session, reservation or answer is lost (CHANGELOG.md says what the upgrade involves)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from infra.local import worktree
from infra.redis_keys import RedisKeys
from tests.integration.harness import REDIS_URL, ROOT, Deployment, wait_for
from tests.integration.test_assignment import City

DRIVERS = [f"drv_u{i}" for i in range(5)]
ORDERS = [f"order_u{i}" for i in range(3)]
# A release heading of CHANGELOG.md: "## 0.1.0 (2026-12-02): commit <sha>".
RELEASE = re.compile(r"^## (\d+\.\d+\.\d+) .*commit ([0-9a-f]{40})\s*$", re.MULTILINE)


def last_release() -> tuple[str, str]:
    found = RELEASE.search((ROOT / "CHANGELOG.md").read_text())
    assert found, "CHANGELOG.md names no release with its commit"
    return found.group(1), found.group(2)


def release_checkout(version: str, commit: str) -> Path:
    """The release's tree beside this one (.cache/upgrade/), made once with `git worktree`."""
    try:
        return worktree(commit, ROOT / ".cache" / "upgrade" / f"{version}-{commit[:12]}")
    except RuntimeError as exc:
        pytest.fail(f"release {version}: {exc} (a shallow clone lacks it: git fetch --unshallow)", pytrace=False)


@pytest.fixture
def upgrade(tmp_path):
    dep = Deployment(workdir=tmp_path)
    dep.extra_env.update(GEODISPATCH_MISSED_HEARTBEATS="1000", GEODISPATCH_LOCATION_MAX_AGE_S="120")
    yield dep
    dep.cleanup()


def test_a_release_worker_replaced_by_this_one_loses_no_session_reservation_or_answer(upgrade):
    version, commit = last_release()
    old = release_checkout(version, commit)
    upgrade.cli("topics", "apply", checkout=old)
    city = City(upgrade, upgrade.start_worker("w1", checkout=old))
    city.worker.wait_ready()
    for n, driver in enumerate(DRIVERS):
        city.driver(driver, 0.2 + 0.3 * n)
    for order in ORDERS:
        city.ask(order)
    before = city.answers(len(ORDERS))
    assigned = {order: answers[0]["driverId"] for order, answers in before.items()}
    assert sorted(assigned) == ORDERS and len(set(assigned.values())) == len(ORDERS), before
    wait_for(lambda: all(city.session(d).get("trip_id") == o for o, d in assigned.items()), message="trips recorded")
    picked = ORDERS[0]
    city.trip(assigned[picked], picked, "picked_up")
    client, keys = redis.Redis.from_url(REDIS_URL, decode_responses=True), RedisKeys(upgrade.redis_prefix,
                                                                                     upgrade.partitions)
    # The release names its keys without Redis Cluster hash tags; this checkout rebuilds its own from
    # the sessions (CHANGELOG.md).
    reservations = {d: client.get(f"{upgrade.redis_prefix}r:{d}") for d in DRIVERS}
    assert {d: o for d, o in reservations.items() if o} == {d: o for o, d in assigned.items()}

    city.worker.stop()
    applied = upgrade.cli("topics", "apply").stdout
    assert "refused" not in applied, applied
    city.worker = upgrade.start_worker("w1")  # this checkout's, on the release's data directory
    city.worker.wait_ready(timeout=120)

    # Sessions: a ping after the upgrade finds each driver's session as it was (a lost one would start
    # again offline and with no trip).
    for n, driver in enumerate(DRIVERS):
        city.driver(driver, 0.2 + 0.3 * n)
    assert {d: city.session(d)["trip_id"] for d in DRIVERS} == {
        d: next((o for o, holder in assigned.items() if holder == d), None) for d in DRIVERS}
    # Reservations: as the release left them.
    assert {d: client.get(keys.reservation(d)) for d in DRIVERS} == reservations
    # Answers: every request sent again gets the same answer; a new one gets a free driver.
    for order in ORDERS:
        city.ask(order)
    city.ask("order_after")
    after = city.answers(2 * len(ORDERS) + 1)
    assert {o: after[o] for o in ORDERS} == {o: before[o] * 2 for o in ORDERS}
    (new,) = after["order_after"]
    assert new["status"] == "assigned" and new["driverId"] not in assigned.values(), new
    # A trip ends as before: the driver is free again.
    city.trip(assigned[picked], picked, "delivered")
    wait_for(lambda: city.session(assigned[picked])["trip_id"] is None, message="the delivered driver freed")
    assert client.get(keys.reservation(assigned[picked])) is None
    # The release's keys, left by the upgrade: the command deletes them and keeps the new layout's.
    held, order = assigned[ORDERS[1]], ORDERS[1]
    assert client.get(f"{upgrade.redis_prefix}r:{held}") == order
    assert "keys of the old layout deleted" in upgrade.cli("index", "forget-old-layout").stdout
    assert [k for k in client.scan_iter(f"{upgrade.redis_prefix}*") if "{" not in k] == [keys.epoch]
    assert client.get(keys.reservation(held)) == order
