"""The fuzz run's generator and oracle, driven by hypothesis: every mutation of every input family
decodes to a valid model or to InvalidMessage (never another error), the outcome a mutation states
is the one the contract's rules give, and what the pipeline would accept is within the contract."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import InvalidMessage, default_codec
from schemas.models import AssignmentRequested, LocationPing
from streams.logic.assignment import coordinates_problem
from tests.faults import fuzz

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
SMALL = fuzz.MUTATIONS + fuzz.COORDINATE_MUTATIONS
FAMILIES = [fuzz.LOCATIONS, fuzz.STATUS, fuzz.TRIPS, fuzz.REQUESTS]
fuzzing = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutate(family: str, mutation, rng: random.Random) -> tuple:
    record = fuzz.valid_record(family, "fz_unit", rng, NOW)
    return mutation(family, record, rng, NOW)


@pytest.mark.parametrize("family", FAMILIES)
@fuzzing
@given(rng=st.randoms(use_true_random=False), data=st.data())
def test_every_mutation_decodes_to_a_model_or_invalid_message(family, rng, data):
    choices = [m for m in SMALL if m not in fuzz.COORDINATE_MUTATIONS or fuzz._coordinates(family)]
    mutation = data.draw(st.sampled_from(choices), label="mutation")
    made = _mutate(family, mutation, rng)
    model = fuzz.MODELS[family]
    try:
        decoded = default_codec().decode(model, made[1])
    except InvalidMessage:
        decoded = None
    outcome = fuzz.expect(family, b"fz_unit", made[1], NOW_MS, 60_000).expect
    if len(made) > 2:
        assert outcome == made[2], (made[0], made[1][:200] if made[1] else made[1])
    if isinstance(decoded, LocationPing):
        assert math.isfinite(decoded.lat) and -90 <= decoded.lat <= 90
        assert math.isfinite(decoded.lng) and -180 <= decoded.lng <= 180


@fuzzing
@given(rng=st.randoms(use_true_random=False), data=st.data())
def test_a_request_with_valid_coordinates_fails_validation_only_on_another_field(rng, data):
    """coordinates_problem and the model agree: once it finds nothing, no coordinate is what the
    model refuses (else an order would get "Invalid request" where the contract says "Invalid
    coordinates")."""
    mutation = data.draw(st.sampled_from(SMALL), label="mutation")
    made = _mutate(fuzz.REQUESTS, mutation, rng)
    try:
        raw = default_codec().decode_raw(AssignmentRequested, made[1])
    except InvalidMessage:
        return
    if coordinates_problem(raw) is not None:
        return
    try:
        default_codec().validate(AssignmentRequested, raw)
    except InvalidMessage as exc:
        assert exc.field not in ("restaurantLatitude", "restaurantLongitude", "customerLatitude",
                                 "customerLongitude"), exc


@fuzzing
@given(rng=st.randoms(use_true_random=False))
def test_valid_records_from_the_schemas_are_accepted_in_both_encodings(rng):
    for family in FAMILIES:
        record = fuzz.valid_record(family, "fz_unit", rng, NOW)
        for fmt in ("json", "avro"):
            value = fuzz.encode(family, record, fmt)
            case = fuzz.expect(family, b"fz_unit", value, NOW_MS, 60_000)
            wanted = fuzz.ANSWERED if family == fuzz.REQUESTS else fuzz.APPLIED
            assert case.expect == wanted and case.error is None, (family, fmt, record)


def test_stale_and_duplicate_pings_are_ignored_in_sequence():
    gen = fuzz.Generator(seed=3, now=NOW)
    first = gen.good_record(fuzz.LOCATIONS, "fz_seq", "json", lat=40.7, lng=-74.0, ts="2026-11-25T11:59:00Z")
    again = gen.good_record(fuzz.LOCATIONS, "fz_seq", "avro", lat=40.8, lng=-74.0, ts="2026-11-25T11:59:00Z")
    older = gen.good_record(fuzz.LOCATIONS, "fz_seq", "json", lat=40.9, lng=-74.0, ts="2026-11-25T11:58:00Z")
    newer = gen.good_record(fuzz.LOCATIONS, "fz_seq", "json", lat=41.0, lng=-74.0, ts="2026-11-25T11:59:30Z")
    cases = [first, again, older, newer]
    fuzz.sequence_pings(cases)
    assert [c.expect for c in cases] == [fuzz.APPLIED, fuzz.IGNORED, fuzz.IGNORED, fuzz.APPLIED]
    assert fuzz.final_positions(cases) == {"fz_seq": (41.0, -74.0)}
