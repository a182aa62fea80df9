"""Geo maths: distances, H3 cells, and how far an H3 ring search must go to cover a radius."""

from __future__ import annotations

import math
from functools import lru_cache

import h3

EARTH_RADIUS_KM = 6371.0088
NEARBY_RESOLUTION = 9  # the sessions API's cells (seed 000)
SEARCH_RESOLUTION = 7  # assignment's candidate search: ~1.4 km edges, few cells per 5 km radius
# Cells near one another differ little in size; these bound the local edge length either way.
EDGE_SHRINK, EDGE_GROW = 0.8, 1.25


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


@lru_cache(maxsize=65536)
def local_edge_km(origin: str) -> float:
    """Mean edge length of the cell's own edges: the scale of the grid around it."""
    edges = h3.origin_to_directed_edges(origin)
    return sum(h3.edge_length(edge, "km") for edge in edges) / len(edges)


def ring_min_distance_km(ring: int, edge_km: float) -> float:
    """A lower bound on the distance from any point of the origin cell to any point of a cell
    `ring` steps away. Ring centres lie at least 1.5*ring edges from the origin's centre (the
    inradius of the hexagon they form); each point is within one edge of its own cell's centre."""
    return max(0.0, 1.5 * ring * edge_km * EDGE_SHRINK - 2 * edge_km * EDGE_GROW)


def rings_for_radius(radius_km: float, edge_km: float) -> int:
    """The smallest ring count whose next ring lies wholly beyond `radius_km`."""
    ring = 0
    while ring_min_distance_km(ring + 1, edge_km) <= radius_km:
        ring += 1
    return ring


def nearest_first(points: dict[str, tuple[float, float]], lat: float, lng: float) -> list[str]:
    """Ids ordered by distance to (lat, lng), then by id for a stable order."""
    return sorted(points, key=lambda key: (haversine_km(lat, lng, *points[key]), key))
