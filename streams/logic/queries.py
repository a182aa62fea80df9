"""Validation of the sessions API's query parameters (seed 000), with the error each one gets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import h3

from streams.logic.geo import is_resolution9_cell

# Plain ASCII digits with an optional minus: int() alone would also take "1_0", " 5" and "٣".
WHOLE_NUMBER = re.compile(r"-?[0-9]{1,6}")


class BadQuery(ValueError):
    def __init__(self, parameter: str, reason: str) -> None:
        self.parameter = parameter
        self.reason = reason
        super().__init__(f"{parameter}: {reason}")


@dataclass(frozen=True)
class NearbyQuery:
    h3: str
    k: int
    limit: int


def _bounded_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not WHOLE_NUMBER.fullmatch(raw):
        raise BadQuery(name, f"must be a whole number from {low} to {high}, got {raw[:32]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise BadQuery(name, f"must be from {low} to {high}, got {value}")
    return value


def parse_nearby(params: Mapping[str, str]) -> NearbyQuery:
    cell = (params.get("h3") or "").strip().lower()
    if not cell:
        raise BadQuery("h3", "is required: a resolution-9 H3 cell (15 hex characters)")
    if not is_resolution9_cell(cell):
        raise BadQuery("h3", f"must be a valid resolution-9 H3 cell (15 hex characters), got {cell[:32]!r}")
    return NearbyQuery(cell, _bounded_int(params, "k", 1, 0, 5), _bounded_int(params, "limit", 50, 1, 100))


@dataclass(frozen=True)
class SupplyDemandQuery:
    h3: str  # at the feed's resolution
    k: int


SUPPLY_DEMAND_MAX_K = 10


def parse_supply_demand(params: Mapping[str, str], resolution: int) -> SupplyDemandQuery:
    """`h3`: any valid H3 cell, taken to the feed's resolution (a finer one's parent, a coarser one's
    centre child); `k`: rings of neighbours, 0 to 10 (default 1)."""
    cell = (params.get("h3") or "").strip().lower()
    if not cell:
        raise BadQuery("h3", "is required: an H3 cell (15 hex characters)")
    if len(cell) != 15 or not h3.is_valid_cell(cell):
        raise BadQuery("h3", f"must be a valid H3 cell (15 hex characters), got {cell[:32]!r}")
    own = h3.get_resolution(cell)
    if own > resolution:
        cell = h3.cell_to_parent(cell, resolution)
    elif own < resolution:
        cell = h3.cell_to_center_child(cell, resolution)
    return SupplyDemandQuery(cell, _bounded_int(params, "k", 1, 0, SUPPLY_DEMAND_MAX_K))
