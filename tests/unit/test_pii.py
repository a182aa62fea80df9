"""PII: tracking and presence records carry exactly the contract's fields and nothing personal, however
much personal data the input events carry (producers may add fields; none of them may leak out)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas import DriverStatus, LocationPing, PresenceChanged, TrackingUpdate, default_codec
from schemas.compat import load_versions
from streams.logic.sessions import DriverSession, SessionRules, apply_assignment, apply_ping, apply_status, ms

# The contract's field sets (CONTRACT.md, seed 002 section 2.1). Changing these is a contract change.
TRACKING_FIELDS = {"type", "booking_id", "driver_id", "lat", "lng", "bearing", "speed_kmh", "timestamp"}
PRESENCE_FIELDS = {"driver_id", "online", "reason", "last_seen", "ts"}
# What an upstream event might carry that must never reach a downstream topic.
PERSONAL = {
    "customer_name": "Ada Lovelace", "customer_phone": "+1 212 555 0100", "customer_address": "1 Main St, Apt 4",
    "driver_name": "Bob Driver", "driver_phone": "+1 212 555 0199", "email": "ada@example.test",
    "deliveryAddress": "1 Main St", "specialInstructions": "Call me at +1 212 555 0100", "license_plate": "ABC-123",
}
PERSONAL_VALUES = set(PERSONAL.values())
NOW = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
RULES = SessionRules(min_ping_interval_ms=0, max_future_skew_ms=60_000, tracking_interval_ms=1000,
                     heartbeat_timeout_ms=15_000)


def _published_json(message) -> dict:
    return json.loads(default_codec().encode(message, "json"))


def _published_avro(message) -> dict:
    codec = default_codec()
    return codec.decode_raw(type(message), codec.encode(message, "avro"))


def _no_personal_values(record: dict) -> None:
    text = json.dumps(record)
    for value in PERSONAL_VALUES:
        assert value not in text


@pytest.mark.parametrize(("model", "fields"), [(TrackingUpdate, TRACKING_FIELDS), (PresenceChanged, PRESENCE_FIELDS)])
def test_models_and_every_schema_version_have_exactly_the_contract_fields(model, fields):
    assert set(model.model_fields) == fields
    versions, _ = load_versions()
    for version in versions[model.avro_name]:
        assert {f["name"] for f in version.raw["fields"]} == fields, version.stem


def test_a_tracking_update_from_a_ping_full_of_personal_data_has_only_the_contract_fields():
    codec = default_codec()
    raw_ping = {"driver_id": "drv_7", "lat": 40.7128, "lng": -74.006, "speed_mps": 8.3, "heading_deg": 90.0,
                "accuracy_m": 5.0, "ts": NOW.isoformat(), **PERSONAL}
    ping = codec.decode(LocationPing, json.dumps(raw_ping).encode())
    on_trip = apply_assignment(DriverSession(driver_id="drv_7", online=True), "drv_7", "order_123").session
    effects = apply_ping(on_trip, ping, "4_-7", ms(NOW), RULES)
    assert effects.tracking is not None
    for record in (_published_json(effects.tracking), _published_avro(effects.tracking)):
        assert set(record) == TRACKING_FIELDS
        assert record["type"] == "driver_location_update"
        assert record["booking_id"] == "order_123"
        _no_personal_values(record)


def test_presence_changes_from_status_and_pings_full_of_personal_data_have_only_the_contract_fields():
    codec = default_codec()
    status = codec.decode(DriverStatus, json.dumps(
        {"driver_id": "drv_7", "online": True, "eligibility": "ACTIVE", "ts": NOW.isoformat(), **PERSONAL}
    ).encode())
    effects = apply_status(None, status, ms(NOW), RULES)
    assert effects.presence is not None
    for record in (_published_json(effects.presence), _published_avro(effects.presence)):
        assert set(record) <= PRESENCE_FIELDS
        assert {"driver_id", "online", "reason", "ts"} <= set(record)
        _no_personal_values(record)


def test_optional_fields_are_published_as_null_so_the_field_set_is_exact():
    tracking = TrackingUpdate(booking_id="o1", driver_id="d1", lat=1.0, lng=2.0, timestamp=NOW)
    assert set(_published_json(tracking)) == TRACKING_FIELDS
    assert _published_json(tracking)["bearing"] is None
    assert set(_published_avro(tracking)) == TRACKING_FIELDS
    presence = PresenceChanged(driver_id="d1", online=True, reason="status", ts=NOW)
    assert set(_published_json(presence)) == PRESENCE_FIELDS
    assert set(_published_avro(presence)) == PRESENCE_FIELDS


def test_extra_fields_cannot_be_smuggled_into_the_published_models():
    tracking = TrackingUpdate.model_validate(
        {"booking_id": "o1", "driver_id": "d1", "lat": 1.0, "lng": 2.0, "timestamp": NOW.isoformat(), **PERSONAL}
    )
    assert set(_published_json(tracking)) <= TRACKING_FIELDS
    presence = PresenceChanged.model_validate(
        {"driver_id": "d1", "online": True, "reason": "status", "ts": NOW.isoformat(), **PERSONAL}
    )
    assert set(_published_json(presence)) <= PRESENCE_FIELDS
