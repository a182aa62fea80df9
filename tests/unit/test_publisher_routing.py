"""Each message goes to its contract topic with its contract key; oversized records are refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infra.topics import TopicNames
from producers.publisher import RecordTooLarge, destination, record_size
from schemas.models import AssignmentRequested, DriverStatus, LocationPing, TripEvent

TS = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
NAMES = TopicNames("p.")


def test_pings_go_to_their_region_keyed_by_driver():
    ping = LocationPing(driver_id="drv_7", lat=40.7128, lng=-74.006, ts=TS)
    assert destination(NAMES, ping) == ("p.driver_locations.4_-7", "drv_7")
    lagos = LocationPing(driver_id="drv_8", lat=6.52, lng=3.37, ts=TS)
    assert destination(NAMES, lagos) == ("p.driver_locations.0_0", "drv_8")


def test_requests_go_to_the_restaurants_region_unless_a_geo_key_is_given():
    request = AssignmentRequested(orderId="o1", restaurantLatitude=40.7, restaurantLongitude=-74.0,
                                  customerLatitude=40.8, customerLongitude=-73.9)
    assert destination(NAMES, request) == ("p.driver_assignment.requests.4_-7", "o1")
    routed = request.model_copy(update={"geoKey": "0_0"})
    assert destination(NAMES, routed) == ("p.driver_assignment.requests.0_0", "o1")


def test_status_and_trip_events_are_keyed_by_driver():
    assert destination(NAMES, DriverStatus(driver_id="d", online=True, ts=TS)) == ("p.driver_status", "d")
    trip = TripEvent(orderId="o1", driverId="d", status="delivered", ts=TS)
    assert destination(NAMES, trip) == ("p.trip_events", "d")


def test_record_size_counts_key_value_and_headers():
    assert record_size(b"k", b"v" * 10, [("h", b"12")]) == 1 + 10 + 1 + 2 + 128
    error = RecordTooLarge("t", b"k", 2_000_000, 1_048_576)
    assert "2000000 bytes" in str(error) and "1048576" in str(error)


def test_publisher_refuses_an_oversized_record_before_sending():
    from infra.settings import Settings
    from producers.publisher import Publisher

    async def send():
        publisher = Publisher(Settings(), max_request_size=1000)  # never started: nothing reaches a broker
        await publisher.send_raw("t", b"k", b"x" * 2000)

    import asyncio

    with pytest.raises(RecordTooLarge):
        asyncio.run(send())
