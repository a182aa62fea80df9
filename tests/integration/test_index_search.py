"""The index's two searches, run inside the real Redis by one script each: `nearby` (the sessions API)
and `candidates` (assignment, a batch of requests' searches in one call) return only available drivers
with a fresh position, nearest first; and the batch's reservations."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

import h3
import pytest

from schemas.models import iso_utc
from streams.index import now_ms
from streams.logic.sessions import DriverSession

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)

CENTRE = h3.cell_to_latlng("892a100d2c3ffff")
FENCE = 1
RETENTION_S = 3600
AT = datetime(2026, 12, 5, 10, 30, 5, tzinfo=UTC)


def located(driver_id: str, dlat: float, dlng: float, age_ms: int = 0, **fields) -> DriverSession:
    lat, lng = CENTRE[0] + dlat, CENTRE[1] + dlng
    defaults = {"online": True, "lat": lat, "lng": lng, "h3_res9": h3.latlng_to_cell(lat, lng, 9),
                "loc_ts_ms": now_ms() - age_ms, "version": 1}
    return DriverSession(driver_id=driver_id, **{**defaults, **fields})


async def test_nearby_offers_only_available_freshly_located_drivers_nearest_first(index):
    await index.write_sessions(
        [
            located("drv_far", 0.004, 0),
            located("drv_near", 0.0005, 0),
            located("drv_mid", 0, 0.002),
            located("drv_stale", 0.0001, 0, age_ms=120_000),
            located("drv_offline", 0.0002, 0, online=False),
            located("drv_on_trip", 0.0003, 0, trip_id="ord_busy"),
            DriverSession(driver_id="drv_unlocated", online=True, version=1),
        ],
        FENCE,
        rebuild=True,
    )
    origin = h3.latlng_to_cell(*CENTRE, 9)
    fresh_since = now_ms() - 60_000

    drivers, cells = await index.nearby(origin, 2, 50, fresh_since)
    assert drivers == ["drv_near", "drv_mid", "drv_far"]
    assert sorted(cells) == sorted(h3.grid_disk(origin, 2))
    assert (await index.nearby(origin, 2, 2, fresh_since))[0] == ["drv_near", "drv_mid"]
    assert (await index.nearby(origin, 0, 50, fresh_since))[0] == [
        d for d in ("drv_near", "drv_mid") if h3.latlng_to_cell(*_position(d), 9) == origin
    ]
    # The stale driver is offered again once the bound allows its age.
    assert "drv_stale" in (await index.nearby(origin, 2, 50, now_ms() - 600_000))[0]


async def test_a_reserved_driver_leaves_both_searches(index):
    await index.write_sessions([located("drv_a", 0.0005, 0), located("drv_b", 0.001, 0)], FENCE, rebuild=True)
    fresh_since = now_ms() - 60_000
    (reservation,) = await index.reserve_first([("ord_1", [("drv_a", 5)])], fresh_since,
                                               RETENTION_S)
    assert reservation.outcome == "reserved"

    origin = h3.latlng_to_cell(*CENTRE, 9)
    assert (await index.nearby(origin, 2, 50, fresh_since))[0] == ["drv_b"]
    ((found, _),) = await index.candidates([(*CENTRE, 5.0)], 8, fresh_since)
    assert [d.driver_id for d, _ in found] == ["drv_b"]


async def test_candidates_are_the_nearest_within_the_radius_with_their_distance(index):
    await index.write_sessions(
        [
            located("drv_1km", 0.009, 0),
            located("drv_100m", 0.0009, 0),
            located("drv_3km", 0.027, 0),
            located("drv_stale", 0.0001, 0, age_ms=120_000),
        ],
        FENCE,
        rebuild=True,
    )
    fresh_since = now_ms() - 60_000

    ((found, maybe_more),) = await index.candidates([(*CENTRE, 2.0)], 8, fresh_since)
    assert [d.driver_id for d, _ in found] == ["drv_100m", "drv_1km"]
    assert [round(km, 1) for _, km in found] == [0.1, 1.0]
    assert found[0][0].loc_ts_ms >= fresh_since
    assert maybe_more is False

    # Asked for two, the search found two (the nearest is stale, so it is not offered) and says more
    # may lie beyond them: the caller widens the search.
    ((found, maybe_more),) = await index.candidates([(*CENTRE, 5.0)], 2, fresh_since)
    assert [d.driver_id for d, _ in found][0] == "drv_100m" and "drv_stale" not in {d.driver_id for d, _ in found}
    assert maybe_more is True


async def test_a_search_widens_past_its_first_circle_only_as_far_as_the_count_needs(index):
    # 0.009 degrees of latitude is 1 km: one driver inside the first circle, three beyond it.
    distances_km = (0.3, 1.0, 3.0, 12.0)
    await index.write_sessions([located(f"drv_{km}km", 0.009 * km, 0) for km in distances_km], FENCE, rebuild=True)
    fresh_since = now_ms() - 60_000

    ((found, maybe_more),) = await index.candidates([(*CENTRE, 20.0)], 3, fresh_since)
    assert [round(km, 1) for _, km in found] == [0.3, 1.0, 3.0]
    assert maybe_more is True
    ((found, maybe_more),) = await index.candidates([(*CENTRE, 20.0)], 8, fresh_since)
    assert [round(km, 1) for _, km in found] == [0.3, 1.0, 3.0, 12.0]
    assert maybe_more is False
    ((found, _),) = await index.candidates([(*CENTRE, 0.2)], 8, fresh_since)
    assert found == []


async def test_one_call_searches_for_several_requests_each_around_its_own_point(index):
    await index.write_sessions([located("drv_here", 0.0009, 0), located("drv_east", 0, 0.09)], FENCE, rebuild=True)
    east = (CENTRE[0], CENTRE[1] + 0.09)
    searches = [(*CENTRE, 2.0), (*east, 2.0), (*CENTRE, 20.0)]
    results = await index.candidates(searches, 8, now_ms() - 60_000)
    assert [[d.driver_id for d, _ in found] for found, _ in results] == [
        ["drv_here"], ["drv_east"], ["drv_here", "drv_east"]
    ]
    assert await index.candidates([], 8, 0) == []


async def test_reservations_of_a_batch_go_in_order_each_to_its_first_free_candidate(index):
    await index.write_sessions([located(d, 0.001 * n, 0) for n, d in enumerate(["drv_a", "drv_b", "drv_c"])], FENCE,
                               rebuild=True)
    fresh_since = now_ms() - 60_000
    await index.reserve_first([("ord_old", [("drv_c", 5)])], fresh_since,
                              RETENTION_S)

    def offer(order: str, *drivers: str) -> tuple[str, list]:
        return order, [(d, 5 + n) for n, d in enumerate(drivers)]

    before = now_ms()
    outcomes = await index.reserve_first(
        [
            offer("ord_1", "drv_a", "drv_b"),
            offer("ord_2", "drv_a", "drv_b"),  # its best was taken by ord_1 a moment before: its next
            offer("ord_3", "drv_a", "drv_b", "drv_c"),  # all taken, drv_c by an order before the batch
            offer("ord_old", "drv_b"),  # decided before: its decision, not another driver
            offer("ord_4"),
        ],
        fresh_since,
        RETENTION_S,
    )
    assert [(r.outcome, r.position) for r in outcomes] == [
        ("reserved", 1), ("reserved", 2), ("none", 3), ("existing", 0), ("none", 0)
    ]
    assert [r.decision and r.decision.driver_id for r in outcomes] == ["drv_a", "drv_b", None, "drv_c", None]
    # Named with its driver and that candidate's ETA, stamped by Redis's clock when it was reserved.
    decision = outcomes[1].decision
    assert (decision.order_id, decision.driver_id, decision.eta) == ("ord_2", "drv_b", 6)
    assert before <= decision.decided_at_ms() <= now_ms()
    assert decision.decided_at == iso_utc(datetime.fromtimestamp(decision.decided_at_ms() / 1000, UTC))
    assert [await index.reservation_holder(d) for d in ("drv_a", "drv_b", "drv_c")] == ["ord_1", "ord_2", "ord_old"]
    assert (await index.decision("ord_2")).driver_id == "drv_b"
    assert await index.decision("ord_3") is None
    # A decision is kept for its retention, not forever (a reservation lasts until the trip ends).
    assert 0 < await index.redis.ttl(index.keys.decision("ord_2")) <= RETENTION_S
    assert await index.redis.ttl(index.keys.reservation("drv_b")) == -1
    ((found, _),) = await index.candidates([(*CENTRE, 5.0)], 8, fresh_since)
    assert found == []


@pytest.mark.parametrize("moment", [
    datetime(1970, 1, 1, tzinfo=UTC), datetime(2000, 2, 29, 23, 59, 59, 999_000, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 1_000, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC),
    datetime(2028, 2, 29, 12, 0, 0, 500_000, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC),
    datetime(2100, 2, 28, 6, 7, 8, 9_000, tzinfo=UTC), datetime(2100, 3, 1, tzinfo=UTC), AT,
])
async def test_the_scripts_write_instants_as_the_schemas_do(index, moment):
    """assignedAt comes from Redis's clock (now_iso in common.lua): its form must be iso_utc's, leap days
    and year ends included."""
    ms = int(moment.timestamp() * 1000)
    common = (resources.files("streams") / "lua" / "common.lua").read_text()
    assert await index.redis.eval(common + "\nreturn iso_utc(tonumber(ARGV[1]))", 0, ms) == iso_utc(moment)


async def test_only_decisions_without_an_expiry_are_forgotten(index):
    await index.redis.set(index.keys.decision("ord_forever"), "{}")  # as 0.1.0 wrote them
    await index.redis.set(index.keys.decision("ord_retried"), "{}", ex=RETENTION_S)
    assert await index.forget_unexpiring_decisions(["ord_forever", "ord_retried", "ord_absent"]) == 1
    assert not await index.redis.exists(index.keys.decision("ord_forever"))
    assert await index.redis.exists(index.keys.decision("ord_retried"))


async def test_searches_of_an_empty_area_find_nobody(index):
    origin = h3.latlng_to_cell(*CENTRE, 9)
    assert await index.nearby(origin, 1, 50, 0) == ([], list(h3.grid_disk(origin, 1)))
    assert await index.candidates([(*CENTRE, 5.0)], 8, 0) == [([], False)]


def _position(driver_id: str) -> tuple[float, float]:
    offsets = {"drv_near": (0.0005, 0), "drv_mid": (0, 0.002)}
    dlat, dlng = offsets[driver_id]
    return CENTRE[0] + dlat, CENTRE[1] + dlng

