"""Region keys, H3 cells, distances and nearest-first ordering."""

from __future__ import annotations

import math

import h3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.topics import region_key
from streams.logic.geo import EARTH_RADIUS_KM, haversine_km, is_resolution9_cell, nearest_first

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
