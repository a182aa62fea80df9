"""Batch matching (GEODISPATCH_MATCHING=batch) against the real broker and Redis: the requests of a
window matched together, every request answered once under two workers, a redelivery answered as
before."""

from __future__ import annotations

import pytest

from streams.routing import key_partition
from tests.integration.harness import wait_for
from tests.integration.test_assignment import City, request

pytestmark = pytest.mark.cluster  # also run by `make test-cluster`: the cluster reserves slot by slot

BATCH = {"GEODISPATCH_MATCHING": "batch", "GEODISPATCH_MATCH_WINDOW_MS": "300",
         "GEODISPATCH_MISSED_HEARTBEATS": "1000", "GEODISPATCH_LOCATION_MAX_AGE_S": "60"}


@pytest.fixture
def batch_city(deployment):
    deployment.extra_env.update(BATCH)
    worker = deployment.start_worker()
    worker.wait_ready()
    return City(deployment, worker)


@pytest.mark.parametrize(("policy", "expected"), [
    ("greedy", {"wide": "near", "narrow": None}),
    ("batch", {"wide": "farther", "narrow": "near"}),
])
def test_a_window_gives_the_near_driver_to_the_order_that_has_no_other(deployment, policy, expected):
    """Both orders are in one partition (key_partition), `wide` first: greedy gives it `near` and
    leaves `narrow`, whose radius reaches no one else, without a driver; matched together, both are
    served."""
    assert key_partition(b"wide", deployment.partitions) == key_partition(b"narrow", deployment.partitions)
    deployment.extra_env.update(BATCH, GEODISPATCH_MATCHING=policy)
    worker = deployment.start_worker()
    worker.wait_ready()
    city = City(deployment, worker)
    city.driver("near", 1.0)
    city.driver("farther", 2.0)
    deployment.produce(deployment.names.requests("4_-7"), [(b"wide", request("wide", radius=5)),
                                                           (b"narrow", request("narrow", radius=1.5))])
    answers = city.answers(2)
    assert {order: found[0].get("driverId") for order, found in answers.items()} == expected


def test_a_redelivered_request_is_answered_identically(batch_city):
    batch_city.driver("only", 0.5)
    batch_city.ask("again")
    first = batch_city.answer("again", 1)
    batch_city.driver("nearer", 0.1)
    for _ in range(2):
        batch_city.ask("again")
    answers = batch_city.answers(3)["again"]
    assert answers == [first] * 3
    assert batch_city.session("nearer")["trip_id"] is None


def test_two_workers_answer_every_request_once_and_give_no_driver_twice(deployment):
    deployment.partitions = 2
    deployment.extra_env.update(BATCH)
    first = deployment.start_worker("a")
    first.wait_ready()
    city = City(deployment, first)
    for index in range(5):
        city.driver(f"pool_{index}", 0.2 + index * 0.3)
    second = deployment.start_worker("b")
    second.wait_ready()
    wait_for(lambda: all(w.get("/stats")[1]["index"]["epoch"] for w in (first, second)), message="both ready")
    orders = [f"rush_{n}" for n in range(30)]
    deployment.produce(deployment.names.requests("4_-7"), [(o.encode(), request(o)) for o in orders])
    answers = city.answers(len(orders), timeout=60)
    assert sorted(answers) == sorted(orders)
    assert all(len(answers[o]) == 1 for o in orders), answers
    assigned = [answers[o][0]["driverId"] for o in orders if answers[o][0]["status"] == "assigned"]
    assert sorted(assigned) == [f"pool_{n}" for n in range(5)]
    failed = [answers[o][0] for o in orders if answers[o][0]["status"] == "failed"]
    assert {answer["error"] for answer in failed} == {"No available drivers in area"}
    # Each worker matched its own partitions' share of the orders.
    for worker in (first, second):
        assignments = worker.stats()["assignments"]
        assert assignments["matching"] == "batch" and sum(assignments["requests"].values()) > 0
