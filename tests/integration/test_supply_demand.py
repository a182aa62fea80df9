"""The supply/demand feed against the real broker and Redis: drivers and requests go through the real
topics to the split-role processes (a sessions process and an assignments process, both holding
partitions 0 and 1), and once the feed settles, its shares added up equal a replay of the run's own
topics (presence, statuses, pings, answers, trip events, requests), through the library, through
`geodispatch supply-demand check` and through the HTTP view. Shares at zero become tombstones, and a
sessions process started again takes its shares over."""

from __future__ import annotations

import json
import time

import h3
import pytest

from consumers.supply_demand import counts_by_share, differences, read_feed, replay, write_supply_demand
from infra.settings import Settings
from schemas.models import parse_feed_key
from tests.integration.harness import Deployment, run, wait_for
from tests.integration.test_assignment import KM_NORTH, City, iso, request
from tests.integration.test_split_roles import PATIENT
from tests.integration.test_split_roles import split as split_roles

# Three places in New York, each in another resolution-7 cell.
DOWNTOWN = (40.7128, -74.006)
MIDTOWN = (40.7549, -73.984)
BROOKLYN = (40.6782, -73.9442)
LAGOS = (6.5244, 3.3792)  # no driver there: refused


def _settings(dep: Deployment, **overrides) -> Settings:
    return Settings(kafka_bootstrap_servers=dep.bootstrap, topic_prefix=dep.prefix, partitions=dep.partitions,
                    regions=dep.regions, min_ping_interval_s=0, **overrides)


def _place(city: City, driver_id: str, where: tuple[float, float], km_north: float = 0.0, online: bool = True,
           eligibility: str = "ACTIVE") -> None:
    names = city.dep.names
    status = {"driver_id": driver_id, "online": online, "eligibility": eligibility, "ts": iso(-1)}
    ping = {"driver_id": driver_id, "lat": where[0] + km_north * KM_NORTH, "lng": where[1], "ts": iso()}
    city.dep.produce(names.status, [(driver_id.encode(), json.dumps(status).encode())])
    city.dep.produce(names.locations("4_-7"), [(driver_id.encode(), json.dumps(ping).encode())])


def _ping(city: City, driver_id: str, where: tuple[float, float], age_s: float = 0) -> None:
    ping = {"driver_id": driver_id, "lat": where[0], "lng": where[1], "ts": iso(-age_s)}
    city.dep.produce(city.dep.names.locations("4_-7"), [(driver_id.encode(), json.dumps(ping).encode())])


def _agree(settings: Settings) -> list[str]:
    """The differences between the feed and the replay of the run's topics (empty: they agree)."""

    async def both():
        replayed = await replay(settings)
        shares = await read_feed(settings)
        expected = replayed.counts(since_ms=time.time() * 1000 - settings.supply_demand_window_s * 1000)
        return differences(counts_by_share(shares.latest.values()), expected), expected

    found, expected = run(both())
    assert expected, "the replay found nothing to count"
    return found


def _feed_agrees(settings: Settings, timeout: float = 45.0) -> None:
    last: list[str] = []

    def agreed() -> bool:
        last[:] = _agree(settings)
        return not last

    try:
        wait_for(agreed, timeout=timeout, interval=1.0, message="the feed to equal the replay")
    except AssertionError as exc:
        raise AssertionError("\n".join(["feed and replay differ:", *last])) from exc


@pytest.fixture
def split(deployment: Deployment):
    return split_roles(deployment)


def _a_day(city: City) -> None:
    """Drivers in three cells (some not available: suspended, offline, on a trip, one moved), requests
    assigned, refused and failed for other reasons, a trip delivered."""
    for n in range(4):
        _place(city, f"dt_{n}", DOWNTOWN, km_north=0.1 * n)
    for n in range(3):
        _place(city, f"mt_{n}", MIDTOWN, km_north=0.1 * n)
    _place(city, "bk_0", BROOKLYN)
    _place(city, "suspended", DOWNTOWN, eligibility="SUSPENDED")
    _place(city, "offline", MIDTOWN, online=False)
    _place(city, "mover", DOWNTOWN)
    wait_for(lambda: (city.session("mover").get("last_loc") or {}).get("lat") == DOWNTOWN[0], message="mover")
    _ping(city, "mover", BROOKLYN)  # a newer ping in another cell
    wait_for(lambda: (city.session("mover").get("last_loc") or {}).get("lat") == BROOKLYN[0], message="mover moved")
    for driver in ("dt_3", "mt_2", "bk_0", "offline", "suspended"):
        wait_for(lambda d=driver: city.session(d).get("last_loc"), message=f"{driver}'s session")
    asked = [("o_dt_1", request("o_dt_1", *DOWNTOWN)), ("o_dt_2", request("o_dt_2", *DOWNTOWN)),
             ("o_mt_2", request("o_mt_2", *MIDTOWN)), ("o_lagos", request("o_lagos", *LAGOS, geoKey="0_0")),
             ("o_bad_customer", request("o_bad_customer", *DOWNTOWN, customerLatitude=123.0)),
             ("o_bad_restaurant", request("o_bad_restaurant", lat=95.0))]
    for order_id, body in asked:
        city.ask(order_id, body)
    answers = city.answers(len(asked))
    assert set(answers) == {order_id for order_id, _ in asked}
    assert answers["o_lagos"][0]["error"] == "No available drivers in area"
    assert answers["o_bad_customer"][0]["error"] == "Invalid coordinates"
    freed = answers["o_dt_1"][0]["driverId"]
    city.trip(freed, "o_dt_1", "delivered")
    wait_for(lambda: city.session(freed).get("trip_id") is None
             and city.session(answers["o_dt_2"][0]["driverId"]).get("trip_id") == "o_dt_2", message="trips")


def test_the_feed_equals_a_replay_of_the_runs_topics(split, tmp_path):
    city, processes = split
    settings = _settings(city.dep)
    _a_day(city)
    _feed_agrees(settings)
    # Both kinds from both partitions, none overwriting another.
    keys = [parse_feed_key(key) for key in run(read_feed(settings)).latest]
    assert {(kind, partition) for _, kind, partition in keys} == {(kind, p) for kind in ("drivers", "requests")
                                                                   for p in range(city.dep.partitions)}
    # The operators' check says the same.
    checked = city.dep.cli("supply-demand", "check", "--settle-s", "5")
    assert "equal the replay" in checked.stdout
    shown = city.dep.cli("supply-demand", "show", "--json")
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert sum(row["available_drivers"] for row in rows) == 3 + 2 + 1 + 1  # dt 3 free, mt 2, bk_0, mover
    assert sum(row["requests"] for row in rows) == 5  # the bad restaurant counts nowhere
    assert sum(row["refused"] for row in rows) == 1 and sum(row["assigned"] for row in rows) == 3

    # The demo's map layer reads the same (consumers.supply_demand.write_supply_demand).
    document = json.loads(run(write_supply_demand(settings, tmp_path / "supply_demand.json")).read_text())
    assert document["totals"] == {"available_drivers": 7, "requests": 5, "assigned": 3, "refused": 1}
    assert {cell["h3"] for cell in document["cells"]} == {row["h3"] for row in rows}

    # The HTTP view adds the shares up around a cell (any resolution; taken to the feed's).
    downtown9 = h3.latlng_to_cell(*DOWNTOWN, 9)
    status, body = city.worker.get(f"/dispatch/supply-demand?h3={downtown9}&k=0")
    assert status == 200, body
    downtown7 = h3.cell_to_parent(downtown9, 7)
    assert body["h3"] == downtown7 and list(body["cells"]) == [downtown7]
    # dt_0..3 and the freed one among them, less the one still on o_dt_2.
    expected = {row["h3"]: row for row in rows}[downtown7]
    assert body["totals"] == {name: expected[name] for name in ("available_drivers", "requests", "assigned",
                                                                "refused")}
    assert body["totals"]["requests"] == 3 and body["totals"]["refused"] == 0
    status, wide = city.worker.get(f"/dispatch/supply-demand?h3={downtown7}&k=10")
    assert status == 200 and len(wide["cells"]) == 331
    assert wide["totals"]["available_drivers"] == 7 and wide["totals"]["requests"] == 4
    for query, parameter in (("h3=zz", "h3"), (f"h3={downtown7}&k=11", "k"), ("", "h3")):
        status, refused = city.worker.get(f"/dispatch/supply-demand?{query}")
        assert status == 400 and refused["parameter"] == parameter, refused


def test_idle_shares_become_tombstones_and_a_restarted_process_takes_its_shares_over(deployment):
    window_s = 3
    processes = {role: deployment.start_worker(role, roles=role, GEODISPATCH_SUPPLY_DEMAND_WINDOW_S=str(window_s),
                                               **PATIENT)
                 for role in ("sessions", "assignments")}
    processes["api"] = deployment.start_worker("api", roles="api", **PATIENT)
    for role in ("sessions", "assignments"):
        processes[role].wait_ready()
    processes["api"].wait_answering()
    city = City(deployment, processes["api"])
    settings = _settings(deployment, supply_demand_window_s=window_s)
    for n in range(3):
        _place(city, f"d_{n}", DOWNTOWN, km_north=0.1 * n)
    wait_for(lambda: all(city.session(f"d_{n}").get("last_loc") for n in range(3)), message="drivers")
    city.ask("o_1", request("o_1", *DOWNTOWN))
    assert city.answers(1)["o_1"][0]["status"] == "assigned"

    def kinds() -> set[str]:
        return {parse_feed_key(key)[1] for key in run(read_feed(settings)).latest}

    wait_for(lambda: kinds() == {"drivers", "requests"}, message="both kinds in the feed")
    # The answer leaves the window: its share is tombstoned, the drivers' stay.
    wait_for(lambda: kinds() == {"drivers"}, timeout=window_s + 10, message="the demand share's tombstone")
    raw = deployment.read_all(deployment.names.supply_demand)
    assert any(record.value is None and b"/requests/" in record.key for record in raw)

    # A driver going offline takes the available count down (d_0 is on o_1's trip).
    status = {"driver_id": "d_1", "online": False, "ts": iso()}
    deployment.produce(deployment.names.status, [(b"d_1", json.dumps(status).encode())])
    _feed_agrees(settings)

    # Restarted on the same data directory, the sessions process writes its shares again as they are now:
    # a driver who went offline while it was down is counted out (its share tombstoned or lowered).
    processes["sessions"].stop()
    off = {"driver_id": "d_2", "online": False, "ts": iso()}
    deployment.produce(deployment.names.status, [(b"d_2", json.dumps(off).encode())])
    _place(city, "late", BROOKLYN)
    sessions = deployment.start_worker("sessions", roles="sessions", GEODISPATCH_SUPPLY_DEMAND_WINDOW_S=str(window_s),
                                       **PATIENT)
    sessions.wait_ready()
    _feed_agrees(settings)
    shares = run(read_feed(settings)).latest
    assert [parse_feed_key(key)[0] for key in shares] == [h3.cell_to_parent(h3.latlng_to_cell(*BROOKLYN, 9), 7)]


def test_a_worker_of_every_role_writes_both_kinds_and_serves_the_view(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    city = City(deployment, worker)
    settings = _settings(deployment)
    _place(city, "solo", MIDTOWN)
    wait_for(lambda: city.session("solo").get("last_loc"), message="solo's session")
    city.ask("o_solo", request("o_solo", *BROOKLYN))  # 6 km away, beyond the radius: refused
    assert city.answers(1)["o_solo"][0]["error"] == "No available drivers in area"
    _feed_agrees(settings)
    midtown = h3.cell_to_parent(h3.latlng_to_cell(*MIDTOWN, 9), 7)
    brooklyn = h3.cell_to_parent(h3.latlng_to_cell(*BROOKLYN, 9), 7)
    status, body = worker.get(f"/dispatch/supply-demand?h3={midtown}&k=8")
    assert status == 200, body
    assert body["cells"][midtown]["available_drivers"] == 1
    assert body["cells"][brooklyn] == {"available_drivers": 0, "requests": 1, "assigned": 0, "refused": 1}
    assert body["totals"] == {"available_drivers": 1, "requests": 1, "assigned": 0, "refused": 1}
    status, refused = worker.get(f"/dispatch/supply-demand?h3={midtown}&k=x")
    assert status == 400 and refused["parameter"] == "k"


def test_an_assignments_process_started_again_counts_its_windows_answers_from_the_topics(split):
    """The answers given before the restart are still in the window: the new process counts them from
    the requests and responses topics, once each, beside those it gives itself."""
    city, processes = split
    settings = _settings(city.dep)
    for n in range(2):
        _place(city, f"r_{n}", DOWNTOWN, km_north=0.1 * n)
    wait_for(lambda: all(city.session(f"r_{n}").get("last_loc") for n in range(2)), message="drivers")
    for order in ("before_1", "before_2", "before_3"):  # two drivers: the third is refused
        city.ask(order, request(order, *DOWNTOWN))
    assert sorted(answer[0]["status"] for answer in city.answers(3).values()) == ["assigned", "assigned", "failed"]
    _feed_agrees(settings)

    processes["assignments"].stop()
    restarted = city.dep.start_worker("assignments", roles="assignments", **PATIENT)
    restarted.wait_ready()
    city.ask("after", request("after", *BROOKLYN))  # 6 km from the drivers, beyond the radius: refused
    assert city.answers(4)["after"][0]["error"] == "No available drivers in area"
    _feed_agrees(settings)
    rows = [json.loads(line) for line in city.dep.cli("supply-demand", "show", "--json").stdout.splitlines()]
    assert [sum(row[name] for row in rows) for name in ("requests", "assigned", "refused")] == [4, 2, 2]
