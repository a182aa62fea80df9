"""Which shard cells of the index a search must read. The available drivers are kept per shard cell,
an H3 cell of a coarser resolution than the index's own (Settings.redis_shard_resolution), so that a
city's load spreads over the slots of a Redis Cluster while a search reads only a few of them. A
search near a shard's edge stays correct because it reads every shard cell that comes within its
radius, whatever shard its point is in."""

from __future__ import annotations

import functools

import h3

from streams.logic.geo import haversine_km

# Radii are rounded up to this step before the shards are looked up: reading one shard too many costs
# little, and a fleet's searches then share a handful of cached answers.
RADIUS_STEP_KM = 0.5
# And points to a cell of this resolution (about 5 km2): a city's requests then share a few hundred
# cached answers, where its resolution-9 cells would miss the cache for most restaurants, for a shard
# read now and then that only the cell's reach (about 1.2 km) brought in.
SEARCH_CELL_RESOLUTION = 7


@functools.lru_cache(maxsize=1 << 16)
def shard_of(cell: str, resolution: int) -> str:
    """The shard cell holding a resolution-9 cell."""
    return h3.cell_to_parent(cell, resolution)


@functools.lru_cache(maxsize=1 << 14)
def reach_km(cell: str) -> float:
    """How far a cell's farthest vertex lies from its centre."""
    lat, lng = h3.cell_to_latlng(cell)
    return max(haversine_km(lat, lng, v_lat, v_lng) for v_lat, v_lng in h3.cell_to_boundary(cell))


def shards_within(lat: float, lng: float, km: float, resolution: int) -> tuple[str, ...]:
    """Every shard cell that comes within `km` of the point (and maybe a few that do not)."""
    steps = -(-km // RADIUS_STEP_KM)
    near = h3.latlng_to_cell(lat, lng, max(SEARCH_CELL_RESOLUTION, resolution))
    return _shards_near(near, steps * RADIUS_STEP_KM, resolution)


@functools.lru_cache(maxsize=1 << 16)
def _shards_near(cell: str, km: float, resolution: int) -> tuple[str, ...]:
    """The shard cells that come within `km` of any point of `cell`. Rings of shard cells around the
    cell's own are added while any cell of the ring comes that close: a cell comes within the distance
    if its centre lies within the distance plus both cells' reach."""
    lat, lng = h3.cell_to_latlng(cell)
    margin = km + reach_km(cell)
    home = shard_of(cell, resolution)
    found, k = [home], 1
    while True:
        ring = h3.grid_ring(home, k)
        near = [s for s in ring if haversine_km(lat, lng, *h3.cell_to_latlng(s)) <= margin + reach_km(s)]
        if not near:
            return tuple(found)
        found += near
        k += 1


def shards_of_cells(cells: list[str], resolution: int) -> dict[str, list[str]]:
    """Resolution-9 cells grouped by the shard cell holding them."""
    grouped: dict[str, list[str]] = {}
    for cell in cells:
        grouped.setdefault(shard_of(cell, resolution), []).append(cell)
    return grouped
