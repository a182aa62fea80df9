"""The nearby endpoint's parameters: defaults, bounds, and every way to get a 400."""

from __future__ import annotations

import re

import h3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.logic.queries import BadQuery, NearbyQuery, parse_nearby

CELL = h3.latlng_to_cell(40.7128, -74.006, 9)


def test_defaults():
    assert parse_nearby({"h3": CELL}) == NearbyQuery(CELL, 1, 50)
    assert parse_nearby({"h3": CELL, "k": "", "limit": ""}) == NearbyQuery(CELL, 1, 50)


@pytest.mark.parametrize(("k", "limit"), [("0", "1"), ("5", "100"), ("2", "20")])
def test_bounds_are_inclusive(k, limit):
    assert parse_nearby({"h3": CELL, "k": k, "limit": limit}) == NearbyQuery(CELL, int(k), int(limit))


def test_an_upper_case_cell_is_the_same_cell():
    assert parse_nearby({"h3": CELL.upper()}).h3 == CELL


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({}, "h3"),
        ({"h3": ""}, "h3"),
        ({"h3": "   "}, "h3"),
        ({"h3": "not-a-cell"}, "h3"),
        ({"h3": "8928308280fffzz"}, "h3"),
        ({"h3": h3.cell_to_parent(CELL, 8)}, "h3"),
        ({"h3": h3.cell_to_children(CELL, 10)[0]}, "h3"),
        ({"h3": CELL + "0"}, "h3"),
        ({"h3": CELL, "k": "-1"}, "k"),
        ({"h3": CELL, "k": "6"}, "k"),
        ({"h3": CELL, "k": "abc"}, "k"),
        ({"h3": CELL, "k": "1.5"}, "k"),
        ({"h3": CELL, "k": "1_0"}, "k"),
        ({"h3": CELL, "k": " 1"}, "k"),
        ({"h3": CELL, "k": "\u0663"}, "k"),  # an Arabic-Indic three: int() would take it
        ({"h3": CELL, "k": "99999999999999999999"}, "k"),
        ({"h3": CELL, "limit": "0"}, "limit"),
        ({"h3": CELL, "limit": "101"}, "limit"),
        ({"h3": CELL, "limit": "-5"}, "limit"),
        ({"h3": CELL, "limit": "ten"}, "limit"),
    ],
)
def test_every_bad_parameter_is_named(params, parameter):
    with pytest.raises(BadQuery) as caught:
        parse_nearby(params)
    assert caught.value.parameter == parameter
    assert caught.value.reason


@given(st.text(max_size=12))
def test_k_is_either_a_whole_number_from_0_to_5_or_a_bad_query(raw):
    try:
        query = parse_nearby({"h3": CELL, "k": raw})
    except BadQuery as exc:
        assert exc.parameter == "k"
    else:
        assert query.k == (1 if raw == "" else int(raw))
        assert raw == "" or re.fullmatch(r"-?[0-9]+", raw)
        assert 0 <= query.k <= 5
