"""Pings that change a driver's position alone reach the index as moves (streams/lua/move.lua): the
position fields and the available sets rewritten, the session document left as it was. And the writer
that stages them: a move the index cannot take is sent again whole. Against the real Redis."""

from __future__ import annotations

import dataclasses

import h3
import pytest

from infra.settings import Settings
from streams.index import RegionIndex, now_ms
from streams.index_writer import FLUSH_MAX, IndexWriter
from streams.metrics import Metrics
from tests.integration.test_index_search import FENCE, located

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)

EAST_KM = 0.02  # far enough east to be in another resolution-9 cell


def _moved(session, dlng: float, version: int, **fields):
    lng = session.lng + dlng
    return dataclasses.replace(session, lng=lng, h3_res9=h3.latlng_to_cell(session.lat, lng, 9),
                               loc_ts_ms=now_ms(), version=version, **fields)


async def _ready(index: RegionIndex) -> None:
    await index.mark_ready(range(index.keys.partitions), "epoch")


async def _available_at(index: RegionIndex, cell: str) -> list[str]:
    return (await index.nearby(cell, 0, 50, now_ms() - 60_000))[0]


async def test_a_move_rewrites_the_position_and_the_cell_sets_and_leaves_the_document(index):
    await _ready(index)
    driver = located("drv_mover", 0, 0)
    assert (await index.write_sessions([driver], FENCE)).applied == 1
    moved = _moved(driver, EAST_KM, version=2, speed_mps=4.5, heading_deg=270.0)
    assert moved.h3_res9 != driver.h3_res9

    result = await index.write_sessions([], FENCE, moves=[moved])
    assert (result.applied, result.unmovable) == (1, ())
    assert await _available_at(index, driver.h3_res9) == []
    assert await _available_at(index, moved.h3_res9) == ["drv_mover"]
    [(found, _)] = (await index.candidates([(moved.lat, moved.lng, 0.1)], 5, now_ms() - 60_000))[0][0]
    assert (found.driver_id, found.lng) == ("drv_mover", moved.lng)
    response = await index.session_response("drv_mover")
    assert response["online"] is True and response["trip_id"] is None
    assert response["last_loc"]["lng"] == moved.lng
    assert (response["last_loc"]["speed_mps"], response["last_loc"]["heading_deg"]) == (4.5, 270.0)
    assert response["last_loc"]["h3_res9"] == moved.h3_res9

    # An older version than the index's is stale, as for whole writes.
    assert (await index.write_sessions([], FENCE, moves=[_moved(driver, -EAST_KM, version=2)])).stale == 1


async def test_a_reserved_driver_moves_without_becoming_available_again(index):
    await _ready(index)
    driver = located("drv_taken", 0, 0)
    await index.write_sessions([driver], FENCE)
    [reservation] = await index.reserve_first([("ord_1", [("drv_taken", 5)])],
                                              now_ms() - 60_000, 3600)
    assert reservation.outcome == "reserved"
    moved = _moved(driver, EAST_KM, version=2)
    assert (await index.write_sessions([], FENCE, moves=[moved])).applied == 1
    assert await _available_at(index, moved.h3_res9) == []
    assert await index.candidates([(moved.lat, moved.lng, 1.0)], 5, now_ms() - 60_000) == [([], False)]


async def test_a_move_the_index_cannot_take_is_written_whole_by_the_writer(index):
    await _ready(index)
    writer = IndexWriter(index, Metrics(), Settings(partitions=index.keys.partitions))
    stranger = located("drv_unknown", 0, 0)  # never written whole: the index has no document
    writer.stage(stranger, moved_only=True)
    result = await writer.flush(FENCE)
    assert result.unmovable == ("drv_unknown",) and writer.pending == 1
    assert (await writer.flush(FENCE)).applied == 1 and writer.pending == 0
    assert await _available_at(index, stranger.h3_res9) == ["drv_unknown"]

    # A new owner's token (a rebalance since the document was written): whole again.
    newer = FENCE + 1
    writer.stage(_moved(stranger, EAST_KM, version=2), moved_only=True)
    assert (await writer.flush(newer)).unmovable == ("drv_unknown",)
    assert (await writer.flush(newer)).applied == 1
    # And a token older than the document's is fenced, whole or moved.
    writer.stage(_moved(stranger, -EAST_KM, version=3), moved_only=True)
    assert (await writer.flush(FENCE)).fenced == 1


async def test_a_change_besides_the_position_staged_after_a_move_is_written_whole(index):
    await _ready(index)
    writer = IndexWriter(index, Metrics(), Settings(partitions=index.keys.partitions))
    driver = located("drv_busy", 0, 0)
    await index.write_sessions([driver], FENCE)
    writer.stage(_moved(driver, EAST_KM, version=2), moved_only=True)
    writer.stage(_moved(driver, EAST_KM, version=3, trip_id="ord_7"))
    assert (await writer.flush(FENCE)).applied == 1
    response = await index.session_response("drv_busy")
    assert response["trip_id"] == "ord_7"
    assert await index.reservation_holder("drv_busy") == "ord_7"


async def test_a_flush_writes_a_bounded_number_of_drivers_and_leaves_the_rest_pending(index):
    await _ready(index)
    writer = IndexWriter(index, Metrics(), Settings(partitions=index.keys.partitions))
    fleet = [located(f"drv_{n}", 0.00001 * n, 0) for n in range(FLUSH_MAX + 10)]
    for driver in fleet:
        writer.stage(driver)
    assert (await writer.flush(FENCE)).applied == FLUSH_MAX and writer.pending == 10
    assert (await writer.flush(FENCE)).applied == 10 and writer.pending == 0
