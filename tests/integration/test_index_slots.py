"""The index on Redis Cluster terms (infra.redis_keys, streams/lua/): every script call stays in one hash
slot, so a reservation is made in the driver's slot, the decision in the order's, and then the
reservation is settled; one Redis takes those steps in one call instead (decide.lua), and the same
histories must hold for it. These are the histories that split them: a worker stopped between the steps,
two workers deciding the same order, a driver that crosses into another shard cell. Against the real
Redis, and against the Redis Cluster of `make cluster-up` under `make test-cluster`."""

from __future__ import annotations

import asyncio
import dataclasses

import h3
import pytest
from redis.asyncio import RedisCluster

from infra.local import REDIS_CLUSTER_NODES
from streams.index import RegionIndex, now_ms
from streams.logic import assignment as decide
from streams.logic.geo import haversine_km
from streams.logic.shards import shard_of
from tests.integration.test_index_search import AT, CENTRE, FENCE, RETENTION_S, located

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)


@pytest.fixture(params=["slot by slot"] if REDIS_CLUSTER_NODES else ["slot by slot", "in one call"])
def index(index, request):
    """The index deciding each way the run's Redis takes: slot by slot, as on a Redis Cluster, and on
    one Redis also in one call (decide.lua)."""
    index.single_node = request.param == "in one call"
    return index


async def _ready(index: RegionIndex) -> None:
    await index.mark_ready(range(index.keys.partitions), "epoch")


async def _candidates(index: RegionIndex) -> list[str]:
    ((found, _),) = await index.candidates([(*CENTRE, 5.0)], 8, now_ms() - 60_000)
    return [d.driver_id for d, _ in found]


async def test_a_reservation_left_unsettled_expires_and_the_drivers_next_ping_frees_it(index):
    await _ready(index)
    driver = located("drv_held", 0.001, 0)
    await index.write_sessions([driver], FENCE)
    # A worker reserved the driver and stopped before it recorded the order's decision.
    reserve = ("reserve", index._driver_keys(["drv_held"]), [now_ms() - 60_000, 300, "ord_lost"])
    [([outcome], _)] = await index._run([reserve])
    assert outcome == 1
    assert await index.reservation_holder("drv_held") == "ord_lost"
    assert 0 < await index.redis.pttl(index.keys.reservation("drv_held")) <= 300
    await asyncio.sleep(0.4)

    assert await index.reservation_holder("drv_held") is None
    moved = dataclasses.replace(driver, version=2, loc_ts_ms=now_ms())
    assert (await index.write_sessions([], FENCE, moves=[moved])).applied == 1
    assert await _candidates(index) == ["drv_held"]
    (reservation,) = await index.reserve_first([("ord_next", [("drv_held", 4)])], now_ms() - 60_000,
                                               RETENTION_S)
    assert (reservation.outcome, reservation.decision.driver_id) == ("reserved", "drv_held")


async def test_a_settled_reservation_lasts_until_the_trip_ends(index):
    await _ready(index)
    await index.write_sessions([located("drv_kept", 0.001, 0)], FENCE)
    await index.reserve_first([("ord_1", [("drv_kept", 4)])], now_ms() - 60_000, RETENTION_S)
    assert await index.redis.pttl(index.keys.reservation("drv_kept")) == -1
    assert 0 < await index.redis.ttl(index.keys.decision("ord_1")) <= RETENTION_S
    assert await _candidates(index) == []


async def test_an_order_decided_by_another_worker_keeps_that_decision_and_frees_the_driver_it_took(index):
    await _ready(index)
    await index.write_sessions([located("drv_first", 0.001, 0), located("drv_second", 0.002, 0)], FENCE)
    fresh = now_ms() - 60_000
    (first,) = await index.reserve_first([("ord_raced", [("drv_first", 3)])], fresh, RETENTION_S)
    # The same order decided again elsewhere (a worker racing the partition's new owner), drv_first
    # gone from its candidates meanwhile.
    (again,) = await index.reserve_first([("ord_raced", [("drv_second", 5)])], fresh, RETENTION_S)
    assert again.outcome == "existing" and again.decision == first.decision
    assert await index.reservation_holder("drv_second") is None
    assert await _candidates(index) == ["drv_second"]


@pytest.mark.parametrize("index", ["slot by slot"], indirect=True)  # in one call, nothing is left unsettled
async def test_a_decided_driver_whose_reservation_expired_is_reserved_again_on_redelivery(index):
    await _ready(index)
    await index.write_sessions([located("drv_decided", 0.001, 0), located("drv_other", 0.002, 0)], FENCE)
    fresh = now_ms() - 60_000
    (decided,) = await index.reserve_first([("ord_re", [("drv_decided", 3)])], fresh, RETENTION_S)
    # The worker recorded the decision and stopped before it settled: the reservation expired.
    await index.redis.delete(index.keys.reservation("drv_decided"))

    (again,) = await index.reserve_first([("ord_re", [("drv_other", 5)])], fresh, RETENTION_S)
    assert again.decision == decided.decision
    assert await index.reservation_holder("drv_decided") == "ord_re"
    assert await index.reservation_holder("drv_other") is None
    # And with no candidate at all, the failure path keeps the decided driver just the same.
    await index.redis.delete(index.keys.reservation("drv_decided"))
    (recorded,) = await index.record_failures([decide.failed("ord_re", decide.NO_DRIVERS, AT)], 60)
    assert recorded == decided.decision and await index.reservation_holder("drv_decided") == "ord_re"


async def test_a_driver_crossing_into_another_shard_is_found_there_alone(index):
    await _ready(index)
    resolution = index.shard_resolution
    home = h3.latlng_to_cell(*CENTRE, resolution)
    neighbour = next(iter(set(h3.grid_ring(home, 1))))
    driver = located("drv_crossing", 0, 0)
    await index.write_sessions([driver], FENCE)
    lat, lng = h3.cell_to_latlng(neighbour)
    cell = h3.latlng_to_cell(lat, lng, 9)
    crossed = dataclasses.replace(driver, lat=lat, lng=lng, h3_res9=cell, version=2, loc_ts_ms=now_ms())
    assert shard_of(cell, resolution) == neighbour
    assert (await index.write_sessions([], FENCE, moves=[crossed])).applied == 1

    assert [d.driver_id for d, _ in (await index.candidates([(lat, lng, 1.0)], 8, now_ms() - 60_000))[0][0]] == [
        "drv_crossing"]
    assert await index.redis.zscore(index.keys.available(home), "drv_crossing") is None
    assert await index.redis.hget(index.keys.fixes(home), "drv_crossing") is None
    assert await index.redis.zscore(index.keys.available(neighbour), "drv_crossing") is not None



async def test_a_search_across_a_shard_edge_finds_the_nearest_of_both_shards(index):
    await _ready(index)
    home = shard_of(h3.latlng_to_cell(*CENTRE, 9), index.shard_resolution)
    neighbour = next(iter(set(h3.grid_ring(home, 1))))
    (lat0, lng0), (lat1, lng1) = h3.cell_to_latlng(home), h3.cell_to_latlng(neighbour)
    # Drivers on the line between the two shards' centres, on both sides of their edge.
    points = {f"drv_{n}": (lat0 + (lat1 - lat0) * f, lng0 + (lng1 - lng0) * f)
              for n, f in enumerate((0.40, 0.44, 0.47, 0.49, 0.51, 0.53, 0.56, 0.60))}
    sessions = [dataclasses.replace(located(driver, 0, 0), lat=lat, lng=lng, h3_res9=h3.latlng_to_cell(lat, lng, 9))
                for driver, (lat, lng) in points.items()]
    assert {shard_of(session.h3_res9, index.shard_resolution) for session in sessions} == {home, neighbour}
    await index.write_sessions(sessions, FENCE)
    point = (lat0 + (lat1 - lat0) * 0.505, lng0 + (lng1 - lng0) * 0.505)

    ((found, maybe_more),) = await index.candidates([(*point, 20.0)], 3, now_ms() - 60_000)
    nearest = sorted(points, key=lambda driver: haversine_km(*point, *points[driver]))[:3]
    assert [d.driver_id for d, _ in found] == nearest and maybe_more
    assert {d.shard for d, _ in found} == {home, neighbour}


async def test_a_driver_reserved_after_it_crossed_into_another_shard_leaves_that_shards_hints(index):
    await _ready(index)
    driver = located("drv_moving", 0, 0)
    home = shard_of(driver.h3_res9, index.shard_resolution)
    neighbour = next(iter(set(h3.grid_ring(home, 1))))
    await index.write_sessions([driver], FENCE)
    ((found, _),) = await index.candidates([(*CENTRE, 1.0)], 8, now_ms() - 60_000)
    assert [(d.driver_id, d.shard) for d, _ in found] == [("drv_moving", home)]
    lat, lng = h3.cell_to_latlng(neighbour)
    crossed = dataclasses.replace(driver, lat=lat, lng=lng, h3_res9=h3.latlng_to_cell(lat, lng, 9), version=2,
                                  loc_ts_ms=now_ms())
    assert (await index.write_sessions([], FENCE, moves=[crossed])).applied == 1

    # Reserved on the strength of the search before it moved, which found it in its old shard.
    (reservation,) = await index.reserve_first([("ord_m", [("drv_moving", 2)])], now_ms() - 60_000,
                                               RETENTION_S, found_in={"drv_moving": home})
    assert reservation.outcome == "reserved"
    for shard in (home, neighbour):
        assert await index.redis.zscore(index.keys.available(shard), "drv_moving") is None
        assert await index.redis.hget(index.keys.fixes(shard), "drv_moving") is None


async def test_reservations_and_decisions_wait_for_a_replica_and_go_out_without_one(index):
    missed = []
    index.wait_replicas, index.wait_timeout_ms, index._on_unreplicated = 1, 50, lambda: missed.append(1)
    await _ready(index)
    await index.write_sessions([located("drv_replicated", 0.001, 0)], FENCE)
    (reservation,) = await index.reserve_first([("ord_w", [("drv_replicated", 3)])], now_ms() - 60_000,
                                               RETENTION_S)
    assert reservation.outcome == "reserved" and await index.reservation_holder("drv_replicated") == "ord_w"
    replicas = await _replicas(index)
    # Each step waited (reserve, record and settle, or the one call): confirmed where a replica runs,
    # counted as missed where none does.
    assert (len(missed) == 0) if replicas else (len(missed) >= (1 if index.single_node else 3))


async def _replicas(index: RegionIndex) -> int:
    """The fewest replicas any primary has."""
    if isinstance(index.redis, RedisCluster):
        info = await index.redis.info("replication", target_nodes=RedisCluster.PRIMARIES)
        return min(node["connected_slaves"] for node in info.values())
    return (await index.redis.info("replication"))["connected_slaves"]
