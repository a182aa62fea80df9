"""Region keys, H3 cells and how many rings a radius search needs."""

from __future__ import annotations

import math

import h3
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from infra.topics import region_key
from streams.logic.geo import (
    EARTH_RADIUS_KM,
    SEARCH_RESOLUTION,
    haversine_km,
    is_resolution9_cell,
    local_edge_km,
    nearest_first,
    rings_for_radius,
)

latitudes = st.floats(min_value=-90, max_value=90, allow_nan=False)
longitudes = st.floats(min_value=-180, max_value=180, allow_nan=False)


@pytest.mark.parametrize(
    ("lat", "lng", "key"),
    [
        (40.7128, -74.006, "4_-7"),  # the contract's example
        (-0.5, -0.5, "0_0"),  # toward zero, never "-0"
        (0.5, 0.5, "0_0"),
        (-9.999, 9.999, "0_0"),
        (-10.0, 10.0, "-1_1"),
        (51.5074, -0.1278, "5_0"),
        (37.7749, -122.4194, "3_-12"),
        (-33.8688, 151.2093, "-3_15"),
        (90.0, 180.0, "9_18"),
        (-90.0, -180.0, "-9_-18"),
    ],
)
def test_region_key_truncates_toward_zero(lat, lng, key):
    assert region_key(lat, lng) == key


@pytest.mark.parametrize(("lat", "lng"), [(math.nan, 0.0), (0.0, math.inf), (-math.inf, 1.0)])
def test_region_key_refuses_non_finite_coordinates(lat, lng):
    with pytest.raises(ValueError):
        region_key(lat, lng)


@given(latitudes, longitudes)
def test_region_key_is_the_truncated_tenth_as_every_other_producer_computes_it(lat, lng):
    key = region_key(lat, lng)
    a, b = key.split("_")
    assert (int(a), int(b)) == (math.trunc(lat / 10), math.trunc(lng / 10))
    assert "-0" not in (a, b)
    assert abs(int(a)) <= 9 and abs(int(b)) <= 18


def test_resolution9_cells():
    cell = h3.latlng_to_cell(40.7128, -74.006, 9)
    assert is_resolution9_cell(cell)
    assert not is_resolution9_cell(h3.cell_to_parent(cell, 8))
    assert not is_resolution9_cell(h3.cell_to_children(cell, 10)[0])
    assert not is_resolution9_cell("8928308280fffzz")
    assert not is_resolution9_cell("")


def test_haversine_and_nearest_first():
    assert haversine_km(0, 0, 0, 1) == pytest.approx(2 * math.pi * EARTH_RADIUS_KM / 360, rel=1e-9)
    assert haversine_km(40.7128, -74.006, 40.7128, -74.006) == 0
    points = {"b": (0.0, 0.02), "a": (0.0, 0.01), "c": (0.0, 0.01)}
    assert nearest_first(points, 0.0, 0.0) == ["a", "c", "b"]


def _destination(lat: float, lng: float, bearing_deg: float, distance_km: float) -> tuple[float, float]:
    """The point distance_km from (lat, lng) along a great circle at the given bearing."""
    d = distance_km / EARTH_RADIUS_KM
    b = math.radians(bearing_deg)
    p1, l1 = math.radians(lat), math.radians(lng)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 540) % 360 - 180


@settings(max_examples=1000, deadline=None)
@given(
    st.floats(min_value=-80, max_value=80),
    longitudes,
    st.floats(min_value=0.05, max_value=30),
    st.floats(min_value=0, max_value=360),
    st.floats(min_value=0, max_value=1),
)
def test_the_ring_count_covers_every_point_within_the_radius(lat, lng, radius_km, bearing, fraction):
    origin = h3.latlng_to_cell(lat, lng, SEARCH_RESOLUTION)
    rings = rings_for_radius(radius_km, local_edge_km(origin))
    point = _destination(lat, lng, bearing, radius_km * fraction)
    assert haversine_km(lat, lng, *point) <= radius_km + 1e-6
    target = h3.latlng_to_cell(*point, SEARCH_RESOLUTION)
    try:
        steps = h3.grid_distance(origin, target)
    except h3.H3BaseException:
        assume(False)  # across a pentagon's distortion H3 has no grid distance; nothing to check
    assert steps <= rings


def test_the_ring_count_grows_with_the_radius():
    edge = local_edge_km(h3.latlng_to_cell(40.7128, -74.006, SEARCH_RESOLUTION))
    counts = [rings_for_radius(r, edge) for r in (0.0, 1.0, 5.0, 10.0, 20.0)]
    assert counts == sorted(counts) and counts[0] >= 1
