"""Which shard cells a search reads (streams.logic.shards): every shard cell that any point within the
radius falls in, wherever in its own shard the search's point lies, and not the whole neighbourhood."""

from __future__ import annotations

import math

import h3
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.logic.geo import EARTH_RADIUS_KM, haversine_km
from streams.logic.shards import SEARCH_CELL_RESOLUTION, reach_km, shard_of, shards_of_cells, shards_within

RESOLUTION = 5


def _point_at(lat: float, lng: float, km: float, bearing_deg: float) -> tuple[float, float]:
    """The point `km` from (lat, lng) on that bearing, on the same sphere as haversine_km."""
    d, b = km / EARTH_RADIUS_KM, math.radians(bearing_deg)
    p1, l1 = math.radians(lat), math.radians(lng)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 540) % 360 - 180


@settings(max_examples=200, deadline=None)
@given(lat=st.floats(-60, 70), lng=st.floats(-179, 179), km=st.floats(0.05, 30),
       bearing=st.floats(0, 360), share=st.floats(0, 1))
def test_every_point_within_the_radius_lies_in_a_shard_the_search_reads(lat, lng, km, bearing, share):
    target = _point_at(lat, lng, km * share, bearing)
    shard = shard_of(h3.latlng_to_cell(*target, 9), RESOLUTION)
    assert shard in shards_within(lat, lng, km, RESOLUTION)


def test_a_search_inside_one_shard_reads_that_shard_alone():
    home = h3.latlng_to_cell(40.7128, -74.006, RESOLUTION)
    lat, lng = h3.cell_to_latlng(home)  # the shard's centre: a 1 km circle stays well inside it
    assert shards_within(lat, lng, 1.0, RESOLUTION) == (home,)


def test_a_wide_search_reads_the_rings_it_reaches_and_stops():
    lat, lng = 40.7128, -74.006
    read = shards_within(lat, lng, 30.0, RESOLUTION)
    home = h3.latlng_to_cell(lat, lng, RESOLUTION)
    assert read[0] == home and len(set(read)) == len(read)
    farthest = max(h3.grid_distance(home, s) for s in read)
    assert 2 <= farthest <= 5
    # Nothing read lies wholly beyond the radius (plus the radius step and the search cell's size).
    near = h3.latlng_to_cell(lat, lng, SEARCH_CELL_RESOLUTION)
    for shard in read:
        assert haversine_km(lat, lng, *h3.cell_to_latlng(shard)) <= 30.0 + 0.5 + 2 * reach_km(near) + reach_km(shard)


def test_cells_are_grouped_by_their_shard():
    ring = h3.grid_disk(h3.latlng_to_cell(40.7128, -74.006, 9), 3)
    grouped = shards_of_cells(ring, RESOLUTION)
    assert sorted(c for cells in grouped.values() for c in cells) == sorted(ring)
    assert all(h3.cell_to_parent(c, RESOLUTION) == shard for shard, cells in grouped.items() for c in cells)
