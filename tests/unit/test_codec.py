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


# -- registry mode (schemas.registry; a stand-in client here, the HTTP one in
#    tests/integration/test_schema_registry.py) ------------------------------------------------------


class _Registry:
    """An in-memory stand-in for RegistryClient: counts what the codec asks."""

    def __init__(self, schemas: dict[int, dict], unreachable: bool = False) -> None:
        self.schemas, self.unreachable, self.asked, self.registered = schemas, unreachable, [], []

    def register(self, subject: str, schema: dict) -> int:
        self.registered.append(subject)
        return 500 + len(self.registered)

    def schema_by_id(self, schema_id: int) -> dict:
        from schemas.registry import RegistryError, SchemaNotFound

        self.asked.append(schema_id)
        if self.unreachable:
            raise RegistryError("connection refused")
        if schema_id not in self.schemas:
            raise SchemaNotFound(f"no id {schema_id}")
        return self.schemas[schema_id]


def _ping_schema(**changes) -> dict:
    schema = json.loads((AVRO_DIR / "LocationPing.v1.avsc").read_text())
    fields = [{**f, **changes[f["name"]]} if f["name"] in changes else f for f in schema["fields"]]
    fields += changes.get("_add", [])
    return {**schema, "fields": fields}


def _framed(schema_id: int, schema: dict, record: dict) -> bytes:
    import io

    import fastavro

    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), record)
    return out.getvalue()


PING = EXAMPLES[0]


def _ping_record(**extra) -> dict:
    return {**PING.model_dump(mode="json"), **extra}


def test_registry_ids_are_fetched_once_and_a_newer_writer_is_resolved_into_our_reader():
    from schemas.codec import Codec

    # A producer's newer LocationPing (one more field, with a default) registered as id 1001.
    newer = _ping_schema(_add=[{"name": "provider", "type": ["null", "string"], "default": None}])
    registry = _Registry({1001: newer})
    codec = Codec.load(registry=registry)
    value = _framed(1001, newer, _ping_record(provider="gps"))
    for _ in range(100):
        assert codec.decode(LocationPing, value) == PING
    assert registry.asked == [1001]  # the hot path asked once; an id never changes meaning


def test_in_registry_mode_the_fixed_ids_are_not_consulted():
    from schemas.codec import Codec

    registry = _Registry({})
    codec = Codec.load(registry=registry)
    fixed = default_codec().encode(PING, "avro")  # written with the fixed id of LocationPing.v1
    with pytest.raises(InvalidMessage, match="is not in the schema registry"):
        codec.decode(LocationPing, fixed)
    assert registry.asked == [struct.unpack(">I", fixed[1:5])[0]]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (None, "Avro schema id 7 is not in the schema registry"),
        (_ping_schema(lat={"type": "string"}), "cannot be read as LocationPing: type mismatch"),
        (_ping_schema(_add=[{"name": "provider", "type": "string"}]), None),  # a new field: readable
        ({**_ping_schema(), "name": "Elsewhere"}, "is Elsewhere, not a message of the contract"),
        ({"type": "string"}, "not a message of the contract"),
    ],
    ids=["unknown id", "field type changed", "field added", "other record", "not a record"],
)
def test_a_registry_schema_our_reader_cannot_resolve_is_refused_once_with_its_reason(schema, message):
    from schemas.codec import Codec

    registry = _Registry({} if schema is None else {7: schema})
    codec = Codec.load(registry=registry)
    # Refused ids are refused on their schema, before the body is read: any body will do for those.
    if message is None:
        value = _framed(7, schema, _ping_record(provider="gps"))
    else:
        value = _framed(7, _ping_schema(), _ping_record())
    for _ in range(3):
        if message is None:
            assert codec.decode(LocationPing, value) == PING
        else:
            with pytest.raises(InvalidMessage, match=message) as caught:
                codec.decode(LocationPing, value)
            assert caught.value.field == "value"
    assert registry.asked == [7]


def test_a_registry_schema_of_another_message_is_refused_for_this_topic():
    from schemas.codec import Codec

    status = json.loads((AVRO_DIR / "DriverStatus.v1.avsc").read_text())
    codec = Codec.load(registry=_Registry({5: status}))
    value = _framed(5, status, EXAMPLES[1].model_dump(mode="json"))
    assert codec.decode(DriverStatus, value) == EXAMPLES[1]
    with pytest.raises(InvalidMessage, match="schema id 5 is DriverStatus, expected LocationPing"):
        codec.decode(LocationPing, value)


def test_an_unreachable_registry_is_asked_again_only_after_a_pause(monkeypatch):
    from schemas import codec as codec_module

    now = [1000.0]
    monkeypatch.setattr(codec_module.time, "monotonic", lambda: now[0])
    registry = _Registry({9: _ping_schema()}, unreachable=True)
    codec = codec_module.Codec.load(registry=registry)
    codec._retry_after_s = 30.0
    value = _framed(9, _ping_schema(), _ping_record())
    for _ in range(50):
        with pytest.raises(InvalidMessage, match="schema registry unavailable"):
            codec.decode(LocationPing, value)
    assert registry.asked == [9]
    registry.unreachable, now[0] = False, now[0] + 31
    assert codec.decode(LocationPing, value) == PING
    assert registry.asked == [9, 9]


def test_avro_output_carries_the_registry_id_of_its_topics_subject_registered_once():
    from schemas.codec import Codec

    registry = _Registry({})
    answer = EXAMPLES[3]
    codec = Codec.load(registry=registry, output_format="avro",
                       output_subjects={"AssignmentResponse": "t.driver_assignment.responses-value"})
    values = [codec.encode(answer) for _ in range(20)]  # no format named: the codec's output format
    assert registry.registered == ["t.driver_assignment.responses-value"]
    assert {struct.unpack(">bI", value[:5]) for value in values} == {(0, 501)}
    assert codec.decode(AssignmentResponse, values[0]) == answer
    assert registry.asked == []  # its own schema under that id is known without a fetch
    assert json.loads(codec.encode(answer, "json"))["orderId"] == "order_123"
    with pytest.raises(ValueError, match="no registry subject for LocationPing"):
        codec.encode(PING, "avro")  # not an output of the worker


def test_without_a_registry_avro_output_carries_the_fixed_id():
    from schemas.codec import Codec

    codec = Codec.load(output_format="avro")
    value = codec.encode(EXAMPLES[3])
    assert value[0] == 0 and struct.unpack(">I", value[1:5])[0] == codec.schema_for(AssignmentResponse).schema_id
    assert default_codec().decode(AssignmentResponse, value) == EXAMPLES[3]


def test_every_input_and_output_topic_has_a_subject():
    from infra.topics import TopicNames
    from schemas.registry import subjects

    found = subjects(TopicNames("t1."), ("4_-7", "0_0"))
    assert found["t1.driver_locations.4_-7-value"] == "LocationPing"
    assert found["t1.driver_assignment.requests.0_0-value"] == "AssignmentRequested"
    assert found["t1.driver_assignment.responses-value"] == "AssignmentResponse"
    assert set(found.values()) == {model.avro_name for model in ALL_MESSAGES}
    assert not any("dlq" in subject for subject in found)
    assert len(found) == 2 * 2 + 8


def test_a_registry_schema_that_is_not_avro_is_refused_for_good():
    from schemas.codec import Codec
    from schemas.registry import NotAvro

    class JsonSchemaRegistry(_Registry):
        def schema_by_id(self, schema_id: int) -> dict:
            self.asked.append(schema_id)
            raise NotAvro(f"schema id {schema_id} is not an Avro schema (JSON)")

    registry = JsonSchemaRegistry({})
    codec = Codec.load(registry=registry)
    value = _framed(3, _ping_schema(), _ping_record())
    for _ in range(3):
        with pytest.raises(InvalidMessage, match="registry schema id 3 is not an Avro schema"):
            codec.decode(LocationPing, value)
    assert registry.asked == [3]
