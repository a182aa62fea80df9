"""Decisions are kept for their retention (GEODISPATCH_DECISION_RETENTION_S) and no longer: within it a
redelivered request gets the same answer; after it the decision is gone from Redis and from the
decisions table (its changelog too), and a redelivery of the old request is answered as expired
rather than given a second driver."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from rocksdict import AccessType, Options, Rdict

from streams.routing import key_partition
from tests.integration.harness import wait_for
from tests.integration.test_assignment import City, request

RETENTION_S = 12
ORDER, LEGACY = "order_kept", "order_of_0.1.0"


def _tombstoned(deployment) -> bool:
    changelog = f"{deployment.prefix}geodispatch-assignment_decisions-changelog"
    records = deployment.read(changelog, 2, timeout=2)
    return any(r.key == ORDER.encode() and r.value is None for r in records)


def _stored(deployment, order: str) -> bytes | None:
    partition = key_partition(order.encode(), deployment.partitions)
    (path,) = (deployment.data_dir("w1")).glob(f"**/assignment_decisions-{partition}.db")
    store = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        return store.get(order.encode())
    finally:
        store.close()


def test_a_decision_is_given_again_within_its_retention_and_gone_everywhere_after_it(deployment):
    deployment.extra_env.update(GEODISPATCH_MISSED_HEARTBEATS="1000", GEODISPATCH_LOCATION_MAX_AGE_S="60",
                                GEODISPATCH_DECISION_RETENTION_S=str(RETENTION_S), GEODISPATCH_MAX_FUTURE_SKEW_S="1")
    # A decision of 0.1.0, which kept them forever: in the table's changelog, and in Redis with no expiry.
    legacy = {"orderId": LEGACY, "driverId": "gone", "eta": 3, "status": "assigned",
              "assignedAt": (datetime.now(UTC) - timedelta(days=2)).isoformat().replace("+00:00", "Z")}
    changelog = f"{deployment.prefix}geodispatch-assignment_decisions-changelog"
    deployment.produce(changelog, [(LEGACY.encode(), json.dumps(legacy).encode())],
                       partition=key_partition(LEGACY.encode(), deployment.partitions))
    client = deployment.redis()
    legacy_key = deployment.redis_keys.decision(LEGACY)
    client.set(legacy_key, json.dumps(legacy))

    city = City(deployment, deployment.start_worker("w1"))
    city.worker.wait_ready()
    wait_for(lambda: not client.exists(legacy_key), timeout=30, message="the unexpiring decision swept from Redis")
    city.driver("keeper", 0.5)
    topic, body = deployment.names.requests("4_-7"), request(ORDER)
    sent_ms = int(time.time() * 1000)
    deployment.produce(topic, [(ORDER.encode(), body)], timestamp_ms=sent_ms)
    first = city.answer(ORDER, 1)
    assert first["driverId"] == "keeper"

    deployment.produce(topic, [(ORDER.encode(), body)])  # redelivered within the retention
    answers = city.answers(2)[ORDER]
    assert answers == [first, first]
    decision_key = deployment.redis_keys.decision(ORDER)
    assert 0 < client.ttl(decision_key) <= RETENTION_S

    wait_for(lambda: not client.exists(decision_key), timeout=RETENTION_S + 10, message="Redis forgets the decision")
    wait_for(lambda: _tombstoned(deployment), timeout=30, message="the decision's tombstone in its changelog")
    city.worker.stop()
    assert _stored(deployment, ORDER) is None
    assert _stored(deployment, LEGACY) is None

    # The original record read again (its offsets reset, say): too old to be decided once more.
    city.worker = deployment.start_worker("w1")
    city.worker.wait_ready(timeout=90)
    city.driver("spare", 0.3)
    deployment.produce(topic, [(ORDER.encode(), body)], timestamp_ms=sent_ms)
    late = city.answers(3)[ORDER][-1]
    assert late["status"] == "failed" and late["error"] == "Request expired", late
    assert city.session("spare")["trip_id"] is None
