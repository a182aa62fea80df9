"""The assignment's choice for a block of requests, against the real Redis: decided together, one
candidate search and one reservation call per round for all of them, earlier requests first, and
each still gets the nearest driver free when its turn comes."""

from __future__ import annotations

import uuid

import h3
import pytest
from pydantic import SecretStr

from infra.settings import Settings
from schemas.models import AssignmentRequested
from streams.agents.assignment import _choose
from streams.app import DispatchApp
from streams.index import now_ms
from streams.logic import assignment as decide
from streams.logic.sessions import DriverSession
from streams.runtime import Runtime
from tests.integration.harness import REDIS_URL

A = (40.7000, -74.0000)
B = (40.8000, -73.9000)  # about 14 km from A


def driver(driver_id: str, at: tuple[float, float], north_m: float) -> DriverSession:
    lat, lng = at[0] + north_m / 111_000, at[1]
    return DriverSession(driver_id=driver_id, online=True, lat=lat, lng=lng, h3_res9=h3.latlng_to_cell(lat, lng, 9),
                         loc_ts_ms=now_ms(), version=1)


def request(order_id: str, at: tuple[float, float]) -> AssignmentRequested:
    return AssignmentRequested(orderId=order_id, restaurantLatitude=at[0], restaurantLongitude=at[1],
                               customerLatitude=at[0] + 0.01, customerLongitude=at[1], radius=5)


@pytest.fixture
async def runtime():
    prefix = f"gd:t{uuid.uuid4().hex[:8]}:"
    built = DispatchApp(Settings(redis_url=SecretStr(REDIS_URL), redis_prefix=prefix, candidates_wanted=2)).runtime
    yield built
    keys = [key async for key in built.index.redis.scan_iter(match=prefix + "*")]
    if keys:
        await built.index.redis.delete(*keys)
    await built.index.aclose()


class CountedSearches:
    """The real index's candidate search, with the searches of each call recorded; from call
    `failing_from` on, Redis is unreachable."""

    def __init__(self, runtime: Runtime, failing_from: int | None = None) -> None:
        self.calls: list[int] = []
        self._search = runtime.index.candidates
        self._failing_from = failing_from
        runtime.index.candidates = self

    async def __call__(self, searches, count, min_loc_ts_ms):
        self.calls.append(len(searches))
        if self._failing_from is not None and len(self.calls) >= self._failing_from:
            raise ConnectionError("Redis unreachable")
        return await self._search(searches, count, min_loc_ts_ms)


async def test_requests_of_a_block_are_decided_together_in_order(runtime):
    drivers = [driver("a1", A, 100), driver("a2", A, 200), driver("a3", A, 300), driver("b1", B, 100)]
    await runtime.index.write_sessions(drivers, fence=1, rebuild=True)
    searches = CountedSearches(runtime)

    [(lone, _)] = await _choose(runtime, [request("ord_0", B)])
    assert lone.driver_id == "b1" and searches.calls == [1]

    chosen = await _choose(runtime, [request(f"ord_{n}", A) for n in (1, 2, 3, 4)])
    # One search for all four (two candidates each); ord_3 and ord_4 found only the drivers ord_1 and ord_2
    # took, so they alone searched again among more: ord_3 took a3, and ord_4's search found nobody else.
    assert searches.calls == [1, 4, 2]
    assert [decision.driver_id for decision, _ in chosen] == ["a1", "a2", "a3", None]
    assert chosen[3][0].status == "failed" and chosen[3][0].error == decide.NO_DRIVERS
    assert chosen[0][1]["runner_up"] == "a2" and chosen[2][1]["candidates"] == 3
    for n, name in ((1, "a1"), (2, "a2"), (3, "a3")):
        assert await runtime.index.reservation_holder(name) == f"ord_{n}"
        assert (await runtime.index.decision(f"ord_{n}")).driver_id == name
    assert await runtime.index.decision("ord_4") == chosen[3][0]

    # The same order again (a redelivery): its decision, not another driver.
    await runtime.index.write_sessions([driver("a4", A, 50)], fence=1)
    [(again, context)] = await _choose(runtime, [request("ord_2", A)])
    assert again == chosen[1][0] and context["reused"] is True
    assert await runtime.index.reservation_holder("a4") is None


async def test_one_order_twice_in_a_block_gets_one_driver(runtime):
    await runtime.index.write_sessions([driver("a1", A, 100), driver("a2", A, 200)], fence=1, rebuild=True)
    (first, _), (second, context) = await _choose(runtime, [request("ord_1", A), request("ord_1", A)])
    assert first == second and first.driver_id == "a1" and context["reused"] is True
    assert await runtime.index.reservation_holder("a2") is None


async def test_requests_decided_before_a_failure_keep_their_drivers_and_only_the_others_fail(runtime):
    await runtime.index.write_sessions([driver(f"a{n}", A, 100 * n) for n in (1, 2, 3)], fence=1, rebuild=True)
    runtime.settings = runtime.settings.model_copy(update={"retry_attempts": 1})
    CountedSearches(runtime, failing_from=2)
    outcomes = await _choose(runtime, [request(f"ord_{n}", A) for n in (1, 2, 3)])
    # All three found a1 and a2; ord_1 and ord_2 reserved them, ord_3 had to search again and Redis was
    # gone by then: it alone fails (and is dead-lettered), the others are answered with their drivers.
    assert [outcome[0].driver_id for outcome in outcomes[:2]] == ["a1", "a2"]
    assert type(outcomes[2]).__name__ == "GaveUp"
    assert [await runtime.index.reservation_holder(d) for d in ("a1", "a2", "a3")] == ["ord_1", "ord_2", None]


async def test_a_failed_search_fails_every_request_of_its_block():
    nothing_there = Settings(redis_url=SecretStr("redis://127.0.0.1:1/0"), retry_attempts=1)
    runtime = DispatchApp(nothing_there).runtime
    outcomes = await _choose(runtime, [request(f"ord_{n}", A) for n in range(3)])
    assert [type(outcome).__name__ for outcome in outcomes] == ["GaveUp"] * 3
    await runtime.index.aclose()
