"""The supply/demand feed's pure parts: available drivers counted as sessions change, answers counted
over a sliding window, the records (and tombstones) each change comes to, the shares added up per cell,
the query's validation, and the replay the integration test checks the feed against."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import h3
import pytest

from consumers.supply_demand import Replay, Shares, Totals, add_up, differences, driver_cell, restaurant_cell
from infra.topics import TopicNames, plan
from schemas import default_codec
from schemas.models import (
    NO_DRIVERS,
    AssignmentResponse,
    DriverStatus,
    LocationPing,
    PresenceChanged,
    SupplyDemand,
    TripEvent,
    demand_outcome,
    feed_key,
    parse_feed_key,
)
from streams.logic.queries import BadQuery, parse_supply_demand
from streams.logic.sessions import DriverSession
from streams.logic.supply_demand import (
    DemandWindow,
    SupplyCounts,
    demand_records,
    orphaned,
    supply_records,
)

NYC = (40.7128, -74.006)
CELL9 = h3.latlng_to_cell(*NYC, 9)
CELL7 = h3.cell_to_parent(CELL9, 7)
FAR9 = h3.latlng_to_cell(40.80, -73.90, 9)
FAR7 = h3.cell_to_parent(FAR9, 7)
NOW = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)


def _session(driver_id: str = "drv_1", cell9: str | None = CELL9, **fields) -> DriverSession:
    return DriverSession(driver_id=driver_id, **{"online": True, "h3_res9": cell9, **fields})


def _counts() -> SupplyCounts:
    return SupplyCounts(7, lambda driver_id: int(driver_id[-1]) % 2)


def test_a_driver_is_counted_in_the_parent_cell_of_its_session_cell_and_partition():
    supply = _counts()
    supply.saw(_session("drv_1"))
    supply.saw(_session("drv_3"))
    supply.saw(_session("drv_2"))
    assert supply.take_changes() == {(CELL7, 1): 2, (CELL7, 0): 1}
    assert supply.take_changes() == {}


def test_a_ping_in_the_same_cell_changes_nothing_and_a_move_moves_the_count():
    supply = _counts()
    supply.saw(_session())
    supply.take_changes()
    supply.saw(_session(lat=1.0))  # same cell, another field
    assert supply.take_changes() == {}
    supply.saw(_session(cell9=FAR9))
    assert supply.take_changes() == {(CELL7, 1): 0, (FAR7, 1): 1}
    assert supply.counts == {(FAR7, 1): 1}  # a share at zero is handed out once, then forgotten


@pytest.mark.parametrize("change", [{"online": False}, {"trip_id": "ord_1"}, {"eligibility": "SUSPENDED"},
                                    {"h3_res9": None}])
def test_a_driver_not_available_any_more_is_counted_out(change):
    supply = _counts()
    supply.saw(_session())
    supply.take_changes()
    supply.saw(_session(**change))
    assert supply.take_changes() == {(CELL7, 1): 0}
    assert supply.drivers == 0


def test_cleared_counts_are_incomplete_until_every_session_is_seen_again():
    supply = _counts()
    supply.saw_all([_session("drv_1"), _session("drv_2")])
    supply.complete = True
    supply.clear()
    assert not supply.complete and supply.counts == {} and supply.take_changes() == {}


def test_answers_count_over_the_window_and_leave_it():
    window = DemandWindow(window_ms=10_000)
    window.add(1_000, (CELL7, 2), "assigned")
    window.add(2_000, (CELL7, 2), "refused")
    window.add(3_000, (CELL7, 2), "other")
    assert window.take_changes() == {(CELL7, 2): (3, 1, 1)}
    window.expire(10_999)
    assert window.take_changes() == {}
    window.expire(11_000)  # the first answer is 10 s old: out
    assert window.take_changes() == {(CELL7, 2): (2, 0, 1)}
    window.expire(13_000)
    assert window.take_changes() == {(CELL7, 2): (0, 0, 0)}
    assert window.counts == {}


def test_answers_read_back_merge_before_those_counted_since():
    window = DemandWindow(window_ms=10_000)
    window.add(5_000, (CELL7, 0), "assigned")
    window.merge([(1_000, (CELL7, 0), "refused"), (2_000, (FAR7, 0), "assigned")])
    assert window.counts[(CELL7, 0)].as_tuple() == (2, 1, 1)
    assert window.answers == 3
    window.expire(11_000)  # the read-back refusal leaves first
    assert window.counts[(CELL7, 0)].as_tuple() == (1, 1, 0)


def test_outcomes_a_refusal_is_no_driver_in_the_area_only():
    assert demand_outcome("assigned", None) == "assigned"
    assert demand_outcome("failed", NO_DRIVERS) == "refused"
    assert demand_outcome("failed", "Request expired") == "other"
    assert demand_outcome("failed", "Invalid request: radius: too large") == "other"


def test_records_keys_and_tombstones():
    supply = supply_records({(CELL7, 3): 2, (FAR7, 0): 0})
    assert {r.key: r.counts for r in supply} == {f"{CELL7}/drivers/3": {"available_drivers": 2},
                                                 f"{FAR7}/drivers/0": None}
    demand = demand_records({(CELL7, 1): (4, 3, 1), (FAR7, 1): (0, 0, 0)})
    assert {r.key: r.counts for r in demand} == {f"{CELL7}/requests/1": {"requests": 4, "assigned": 3, "refused": 1},
                                                 f"{FAR7}/requests/1": None}


def test_a_new_owner_tombstones_the_shares_of_its_partitions_it_does_not_count():
    existing = [(CELL7, "drivers", 0), (FAR7, "drivers", 0), (CELL7, "drivers", 1), (CELL7, "requests", 0)]
    found = orphaned(existing, "drivers", {0}, [(CELL7, 0)])
    assert [(r.key, r.counts) for r in found] == [(f"{FAR7}/drivers/0", None)]


def test_keys_round_trip_and_others_are_refused():
    assert parse_feed_key(feed_key(CELL7, "requests", 12)) == (CELL7, "requests", 12)
    for bad in ("x", f"{CELL7}/cars/1", f"{CELL7}/drivers/-1", "/drivers/1", f"{CELL7}/drivers/1/2"):
        with pytest.raises(ValueError):
            parse_feed_key(bad)


def _share(cell: str, kind: str, partition: int, **counts) -> SupplyDemand:
    return SupplyDemand(h3=cell, resolution=7, kind=kind, partition=partition, window_s=300, ts=NOW, **counts)


def test_the_latest_share_per_key_wins_a_tombstone_removes_it_and_a_bad_record_is_counted():
    codec, shares = default_codec(), Shares()
    first = _share(CELL7, "drivers", 0, available_drivers=1)
    shares.apply(first.key.encode(), codec.encode(first), codec)
    shares.apply(first.key.encode(), codec.encode(_share(CELL7, "drivers", 0, available_drivers=4)), codec)
    other = _share(CELL7, "requests", 0, requests=2, refused=2)
    shares.apply(other.key.encode(), codec.encode(other), codec)
    assert shares.latest[first.key].available_drivers == 4
    shares.apply(other.key.encode(), None, codec)
    assert list(shares.latest) == [first.key]
    shares.apply(b"not a key", b"{}", codec)
    shares.apply(f"{FAR7}/drivers/0".encode(), codec.encode(first), codec)  # a value under another key
    shares.apply(first.key.encode(), json.dumps({"h3": CELL7}).encode(), codec)
    assert shares.invalid == 3 and shares.latest[first.key].available_drivers == 4


def test_shares_add_up_per_cell_over_kinds_and_partitions():
    shares = [_share(CELL7, "drivers", 0, available_drivers=2), _share(CELL7, "drivers", 3, available_drivers=1),
              _share(CELL7, "requests", 0, requests=5, assigned=3, refused=2), _share(FAR7, "drivers", 1,
                                                                                      available_drivers=7)]
    assert add_up(shares, [CELL7]) == {CELL7: Totals(3, 5, 3, 2)}
    assert add_up(shares)[FAR7] == Totals(7, 0, 0, 0)
    empty = h3.grid_disk(CELL7, 1)[1]
    assert add_up(shares, [empty]) == {empty: Totals()}


def test_the_query_takes_any_cell_to_the_feeds_resolution():
    assert parse_supply_demand({"h3": CELL9}, 7).h3 == CELL7
    assert parse_supply_demand({"h3": CELL7, "k": "3"}, 7).k == 3
    coarse = h3.cell_to_parent(CELL9, 5)
    assert h3.get_resolution(parse_supply_demand({"h3": coarse}, 7).h3) == 7
    for query, parameter in (({}, "h3"), ({"h3": "zz"}, "h3"), ({"h3": CELL7, "k": "11"}, "k"),
                             ({"h3": CELL7, "k": "-1"}, "k"), ({"h3": CELL7, "k": "one"}, "k")):
        with pytest.raises(BadQuery) as refused:
            parse_supply_demand(query, 7)
        assert refused.value.parameter == parameter


def test_cells_of_drivers_and_restaurants():
    assert driver_cell(*NYC, 7) == CELL7
    # The parent of the resolution-9 cell, as for drivers: here not the resolution-7 cell of the point.
    assert restaurant_cell({"restaurantLatitude": NYC[0], "restaurantLongitude": NYC[1]}, 7) == CELL7
    assert h3.latlng_to_cell(*NYC, 7) != CELL7
    for lat in (None, "40.7", True, float("nan"), 91.0):
        assert restaurant_cell({"restaurantLatitude": lat, "restaurantLongitude": NYC[1]}, 7) is None


def test_the_replay_counts_what_the_worker_would():
    codec = default_codec()
    replay = Replay(resolution=7, partitions=4, min_ping_interval_ms=1000)

    def feed(kind, message, at_ms=0):
        replay.feed(kind, codec.encode(message), at_ms)

    for driver in ("drv_1", "drv_2", "drv_3", "drv_4"):
        feed("presence", PresenceChanged(driver_id=driver, online=True, reason="status", ts=NOW))
        feed("ping", LocationPing(driver_id=driver, lat=NYC[0], lng=NYC[1], ts=NOW))
    feed("status", DriverStatus(driver_id="drv_2", eligibility="SUSPENDED", ts=NOW))
    feed("presence", PresenceChanged(driver_id="drv_3", online=False, reason="heartbeat_timeout", ts=NOW))
    # Too soon after the last ping: dropped, as the worker drops it.
    feed("ping", LocationPing(driver_id="drv_1", lat=40.80, lng=-73.90, ts=NOW.replace(microsecond=500_000)))
    replay.feed("request", json.dumps({"orderId": "ord_1", "restaurantLatitude": NYC[0],
                                       "restaurantLongitude": NYC[1]}).encode(), 0)
    replay.feed("request", json.dumps({"orderId": "ord_2", "restaurantLatitude": NYC[0],
                                       "restaurantLongitude": NYC[1]}).encode(), 0)
    feed("response", AssignmentResponse(orderId="ord_1", status="assigned", driverId="drv_4", eta=5,
                                        assignedAt=NOW), 5_000)
    feed("response", AssignmentResponse(orderId="ord_2", status="failed", error=NO_DRIVERS, failedAt=NOW), 6_000)
    counts = replay.counts()
    drivers = {key: value for key, value in counts.items() if key[1] == "drivers"}
    assert sum(v["available_drivers"] for v in drivers.values()) == 1  # drv_1 only
    assert all(key[0] == CELL7 for key in drivers)
    demand = [value for key, value in counts.items() if key[1] == "requests"]
    assert sorted(map(sorted, (v.items() for v in demand))) == sorted(
        map(sorted, ({"requests": 1, "assigned": 1}.items(), {"requests": 1, "refused": 1}.items())))
    assert replay.counts(since_ms=5_500) != counts  # the assignment is out of the window
    feed("trip", TripEvent(orderId="ord_1", driverId="drv_4", status="delivered", ts=NOW))
    assert sum(v.get("available_drivers", 0) for v in replay.counts().values()) == 2
    assert differences(counts, counts) == []
    assert differences({(CELL7, "drivers", 0): {"available_drivers": 1}}, {}) != []


def test_the_feed_topic_is_compacted_with_one_partition_whatever_the_deployments_count():
    names = TopicNames("t.")
    (spec,) = [spec for spec in plan(names, ("4_-7",), 8, 3) if spec.name == names.supply_demand]
    assert spec.name == "t.dispatch.supply_demand" and spec.partitions == 1
    assert spec.configs["cleanup.policy"] == "compact"


class _Follower:
    def __init__(self, shares: Shares | None = None) -> None:
        self._shares = shares
        self.failure = None if shares is not None else "KafkaConnectionError: no broker"

    async def current(self) -> Shares:
        if self._shares is None:
            raise OSError("no broker")
        return self._shares


def test_the_view_adds_up_the_ring_refuses_bad_questions_and_says_when_the_feed_is_unreadable():
    import asyncio

    from streams.answers import supply_demand_answer

    shares = Shares()
    for share in (_share(CELL7, "drivers", 0, available_drivers=2), _share(CELL7, "requests", 1, requests=3,
                                                                          refused=1), _share(FAR7, "drivers", 0,
                                                                                             available_drivers=5)):
        shares.latest[share.key] = share
    body, status = asyncio.run(supply_demand_answer(_Follower(shares), 7, 300, {"h3": CELL9, "k": "1"}))
    assert status == 200 and body["h3"] == CELL7 and len(body["cells"]) == 7
    assert body["cells"][CELL7] == {"available_drivers": 2, "requests": 3, "assigned": 0, "refused": 1}
    assert body["totals"] == body["cells"][CELL7]  # FAR7 is outside the ring
    body, status = asyncio.run(supply_demand_answer(_Follower(shares), 7, 300, {"h3": CELL9, "k": "99"}))
    assert (status, body["parameter"]) == (400, "k")
    body, status = asyncio.run(supply_demand_answer(_Follower(None), 7, 300, {"h3": CELL9}))
    assert status == 503 and "no broker" in body["detail"]
