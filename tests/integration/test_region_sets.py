"""Assignments processes scaled by regions (docs/SCALING.md, "Many workers"): a group per set of regions,
each with `GEODISPATCH_REGIONS` and an app id of its own, beside one sessions group for the whole
fleet. Each group answers its regions' requests, exactly once, keeps its own decisions, and searches the
one shared index. On the real broker and Redis."""

from __future__ import annotations

import json

import pytest

from tests.integration.harness import Deployment, wait_for
from tests.integration.test_assignment import City, iso, request

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)

PATIENT = {"GEODISPATCH_MISSED_HEARTBEATS": "1000", "GEODISPATCH_LOCATION_MAX_AGE_S": "60"}
# Region "0_0" (the Gulf of Guinea, as good as any): a restaurant and a driver 1 km north of it.
GULF = (0.5, 0.5)


def test_each_region_sets_group_answers_its_own_regions_requests_once(deployment: Deployment):
    sets = {"ny": "4_-7", "gulf": "0_0"}
    for name in sets:
        deployment.cli("topics", "apply", GEODISPATCH_APP_ID=f"geodispatch-{name}")
    sessions = deployment.start_worker("sessions", roles="sessions,api", **PATIENT)
    groups = {name: deployment.start_worker(name, roles="assignments", GEODISPATCH_REGIONS=region,
                                            GEODISPATCH_APP_ID=f"geodispatch-{name}", **PATIENT)
              for name, region in sets.items()}
    for worker in (sessions, *groups.values()):
        worker.wait_ready()
    city = City(deployment, sessions)
    city.driver("drv_ny", 0.5)
    _gulf_driver(deployment, city)

    city.ask("order_ny")
    deployment.produce(deployment.names.requests("0_0"),
                       [(b"order_gulf", request("order_gulf", lat=GULF[0], lng=GULF[1], geoKey="0_0"))])
    answers = city.answers(2)
    assert {order: [(a["status"], a.get("driverId")) for a in found] for order, found in answers.items()} == {
        "order_ny": [("assigned", "drv_ny")], "order_gulf": [("assigned", "drv_gulf")]}
    for name, order in (("ny", "order_ny"), ("gulf", "order_gulf")):
        decided = _decided(deployment, name)
        assert decided == {order}, f"group {name} decided {decided}"


def _gulf_driver(deployment: Deployment, city: City) -> None:
    names = deployment.names
    status = {"driver_id": "drv_gulf", "online": True, "eligibility": "ACTIVE", "ts": iso()}
    ping = {"driver_id": "drv_gulf", "lat": GULF[0] + 0.009, "lng": GULF[1], "ts": iso()}
    deployment.produce(names.status, [(b"drv_gulf", json.dumps(status).encode())])
    deployment.produce(names.locations("0_0"), [(b"drv_gulf", json.dumps(ping).encode())])
    wait_for(lambda: (city.session("drv_gulf").get("last_loc") or {}).get("lat") == ping["lat"],
             message="drv_gulf's session")


def _decided(deployment: Deployment, group: str) -> set[str]:
    """The orders in a group's decisions changelog."""
    changelog = f"{deployment.prefix}geodispatch-{group}-assignment_decisions-changelog"
    return {record.key.decode() for record in deployment.read(changelog, 1, timeout=10)}
