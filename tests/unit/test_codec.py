"""The codec: every schema round-trips in JSON and Avro, invalid input gives InvalidMessage naming the
field, and arbitrary bytes give a model or InvalidMessage, never anything else."""

from __future__ import annotations

import json
import math
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    AssignmentRequested,
    AssignmentResponse,
    DriverCommand,
    DriverStatus,
    InvalidMessage,
    LocationPing,
    PresenceChanged,
    TrackingUpdate,
    TripEvent,
    default_codec,
)
from schemas.codec import AVRO_DIR
from schemas.models import ALL_MESSAGES

NOW = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
EXAMPLES = [
    LocationPing(driver_id="drv_7", lat=40.7128, lng=-74.006, speed_mps=8.3, heading_deg=90.0, accuracy_m=5.0, ts=NOW),
    DriverStatus(driver_id="drv_7", online=True, eligibility="ACTIVE", ts=NOW),
    AssignmentRequested(
        eventId="e1", eventType="AssignmentRequested", occurredAt="2024-01-15T10:30:00.000Z", orderId="order_123",
        geoKey="4_-7", restaurantLatitude=40.7128, restaurantLongitude=-74.006, customerLatitude=40.7589,
        customerLongitude=-73.9851, preparationTime=15, radius=5, items=[{"name": "pizza", "qty": 2}],
        totalAmount=34.97, specialInstructions="Please deliver to front door",
    ),
    AssignmentResponse(orderId="order_123", status="assigned", driverId="driver_456", eta=25, assignedAt=NOW),
    AssignmentResponse(orderId="order_123", status="failed", error="No available drivers in area", failedAt=NOW),
    TripEvent(orderId="order_123", driverId="drv_7", status="delivered", ts=NOW),
    PresenceChanged(driver_id="drv_7", online=False, reason="heartbeat_timeout", last_seen=NOW, ts=NOW),
    TrackingUpdate(booking_id="order_123", driver_id="drv_7", lat=1.0, lng=2.0, bearing=90.0, speed_kmh=30.0,
                   timestamp=NOW),
    DriverCommand(driver_id="drv_7", kind="assign", order_id="order_123", ts=NOW),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_every_message_round_trips(message, fmt):
    codec = default_codec()
    assert codec.decode(type(message), codec.encode(message, fmt)) == message


def test_every_model_has_a_schema_with_the_same_fields():
    codec = default_codec()
    for model in ALL_MESSAGES:
        schema = json.loads((AVRO_DIR / f"{model.avro_name}.v1.avsc").read_text())
        avro_fields = {f["name"] for f in schema["fields"]}
        assert avro_fields == set(model.model_fields), model.__name__
        assert codec.schema_for(model).name == model.avro_name


def test_json_field_names_are_the_contracts():
    encoded = json.loads(default_codec().encode(EXAMPLES[3]))
    assert set(encoded) == {"orderId", "driverId", "eta", "assignedAt", "status"}
    failed = json.loads(default_codec().encode(EXAMPLES[4]))
    assert set(failed) == {"orderId", "error", "failedAt", "status"}
    assert failed["failedAt"] == "2026-01-15T10:30:00.000Z"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"", "value"),
        (b"not json", "value"),
        (b"[1, 2]", "value"),
        (b'{"lat": 1, "lng": 2, "ts": "2026-01-01T00:00:00Z"}', "driver_id"),
        (b'{"driver_id": " \\t ", "lat": 1, "lng": 2, "ts": "2026-01-01T00:00:00Z"}', "driver_id"),
        (b'{"driver_id": "d", "lat": 91, "lng": 2, "ts": "2026-01-01T00:00:00Z"}', "lat"),
        (b'{"driver_id": "d", "lat": "40.1", "lng": 2, "ts": "2026-01-01T00:00:00Z"}', "lat"),
        (b'{"driver_id": "d", "lat": 1, "lng": 2, "ts": "2026-01-01T00:00:00"}', "ts"),
        (b'{"driver_id": "d", "lat": 1, "lng": 2, "ts": "yesterday"}', "ts"),
        (b'{"driver_id": "d", "lat": NaN, "lng": 2, "ts": "2026-01-01T00:00:00Z"}', "value"),
        (b"\x00\x00\x00", "value"),
        (b"\x00\x00\x00\x00\x63abc", "value"),
        (b"\x00\x00\x00\x00\x02abc", "value"),
        (b"\x00\x00\x00\x00\x01\x02", "value"),
    ],
)
def test_invalid_input_names_the_field(payload, field):
    with pytest.raises(InvalidMessage) as caught:
        default_codec().decode(LocationPing, payload)
    assert caught.value.field == field
    assert caught.value.reason


def test_avro_nan_coordinate_is_invalid():
    codec = default_codec()
    body = codec.encode(EXAMPLES[0], "avro")
    schema = codec.schema_for(LocationPing)
    import io

    import fastavro

    record = EXAMPLES[0].model_dump(mode="json") | {"lat": math.nan}
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema.schema_id))
    fastavro.schemaless_writer(out, schema.parsed, record)
    assert out.getvalue() != body
    with pytest.raises(InvalidMessage) as caught:
        codec.decode(LocationPing, out.getvalue())
    assert caught.value.field == "lat"


def test_oversized_value_is_refused_before_parsing():
    with pytest.raises(InvalidMessage, match="over the"):
        default_codec().decode(LocationPing, b"{" + b" " * 2_000_000 + b"}")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(ALL_MESSAGES))
def test_arbitrary_bytes_give_a_model_or_invalid_message(data, model):
    try:
        decoded = default_codec().decode(model, data)
    except InvalidMessage:
        return
    assert isinstance(decoded, model)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10), st.binary(max_size=120), st.sampled_from(ALL_MESSAGES))
def test_arbitrary_avro_frames_give_a_model_or_invalid_message(schema_id, body, model):
    data = struct.pack(">bI", 0, schema_id) + body
    try:
        decoded = default_codec().decode(model, data)
    except InvalidMessage:
        return
    assert isinstance(decoded, model)
