"""Geo maths: great-circle distances, H3 cells, nearest-first ordering."""

from __future__ import annotations

import math

import h3

EARTH_RADIUS_KM = 6371.0088
NEARBY_RESOLUTION = 9  # the sessions API's cells (seed 000)


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lng2 - lng1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def cell(lat: float, lng: float, resolution: int) -> str:
    return h3.latlng_to_cell(lat, lng, resolution)


def is_resolution9_cell(value: str) -> bool:
    return len(value) == 15 and h3.is_valid_cell(value) and h3.get_resolution(value) == NEARBY_RESOLUTION


def nearest_first(points: dict[str, tuple[float, float]], lat: float, lng: float) -> list[str]:
    """Ids ordered by distance to (lat, lng), then by id for a stable order."""
    return sorted(points, key=lambda key: (haversine_km(lat, lng, *points[key]), key))
