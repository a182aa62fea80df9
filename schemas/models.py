"""Typed, validated mirrors of the Avro schemas; a test keeps the two in step field for field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer, field_validator


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a Z, the form every seed document uses."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Timestamps travel as ISO-8601 strings (JSON and Avro alike) and must carry an offset.
Timestamp = Annotated[AwareDatetime, PlainSerializer(iso_utc, return_type=str)]
# strict: a coordinate given as a string or a boolean is an error, not something to coerce.
Latitude = Annotated[float, Field(strict=True, ge=-90.0, le=90.0, allow_inf_nan=False)]
Longitude = Annotated[float, Field(strict=True, ge=-180.0, le=180.0, allow_inf_nan=False)]
OptionalFinite = Annotated[float | None, Field(default=None, allow_inf_nan=False)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("is blank (whitespace only)")
    return value


# An id: a whitespace-only one would name a driver or order nobody can look up or tell apart.
NonEmpty = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_not_blank)]

Eligibility = Literal["ACTIVE", "SUSPENDED", "INACTIVE"]
TripStatus = Literal["picked_up", "delivered", "cancelled"]


class Message(BaseModel):
    """Base of every contract message: unknown fields are ignored so producers can add fields."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # The Avro schema this model mirrors (file stem without the version).
    avro_name: ClassVar[str]
    # Fields whose Avro form is the JSON text of a free-form value.
    avro_json_fields: ClassVar[tuple[str, ...]] = ()
    # JSON keeps an empty optional field as null, so a consumer sees every field of the contract;
    # a message whose contract lists exact shapes per case leaves them out instead.
    json_drops_nulls: ClassVar[bool] = False


class LocationPing(Message):
    avro_name: ClassVar[str] = "LocationPing"

    driver_id: NonEmpty
    lat: Latitude
    lng: Longitude
    speed_mps: OptionalFinite
    heading_deg: OptionalFinite
    accuracy_m: OptionalFinite
    ts: Timestamp


class DriverStatus(Message):
    avro_name: ClassVar[str] = "DriverStatus"

    driver_id: NonEmpty
    online: bool | None = None
    eligibility: Eligibility | None = None
    ts: Timestamp


class AssignmentRequested(Message):
    avro_name: ClassVar[str] = "AssignmentRequested"
    avro_json_fields: ClassVar[tuple[str, ...]] = ("items",)

    eventId: str | None = None
    eventType: str | None = None
    occurredAt: str | None = None
    orderId: NonEmpty
    geoKey: str | None = None
    restaurantLatitude: Latitude
    restaurantLongitude: Longitude
    customerLatitude: Latitude
    customerLongitude: Longitude
    preparationTime: Annotated[float, Field(ge=0, le=24 * 60, allow_inf_nan=False)] = 0
    radius: Annotated[float, Field(gt=0, le=200, allow_inf_nan=False)] = 5
    items: list[Any] | None = None
    totalAmount: OptionalFinite
    specialInstructions: str | None = None

    @field_validator("items", mode="before")
    @classmethod
    def _items_from_json_text(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


COORDINATE_FIELDS = ("restaurantLatitude", "restaurantLongitude", "customerLatitude", "customerLongitude")


# The failure seed 003 names for an order no driver could be found for: counted apart by the feed and
# the simulator's comparison.
NO_DRIVERS = "No available drivers in area"


class AssignmentResponse(Message):
    """assigned: orderId, driverId, eta, assignedAt, status; failed: orderId, error, failedAt, status."""

    avro_name: ClassVar[str] = "AssignmentResponse"
    json_drops_nulls: ClassVar[bool] = True

    orderId: NonEmpty
    status: Literal["assigned", "failed"]
    driverId: str | None = None
    eta: int | None = None
    assignedAt: Timestamp | None = None
    error: str | None = None
    failedAt: Timestamp | None = None


class TripEvent(Message):
    avro_name: ClassVar[str] = "TripEvent"

    orderId: NonEmpty
    driverId: NonEmpty
    status: TripStatus
    ts: Timestamp


class PresenceChanged(Message):
    avro_name: ClassVar[str] = "PresenceChanged"

    driver_id: NonEmpty
    online: bool
    reason: Literal["status", "heartbeat_timeout"]
    last_seen: Timestamp | None = None
    ts: Timestamp


class TrackingUpdate(Message):
    avro_name: ClassVar[str] = "TrackingUpdate"

    type: Literal["driver_location_update"] = "driver_location_update"
    booking_id: NonEmpty
    driver_id: NonEmpty
    lat: Latitude
    lng: Longitude
    bearing: OptionalFinite
    speed_kmh: OptionalFinite
    timestamp: Timestamp


class DriverCommand(Message):
    """Internal: a request to the worker that owns this driver's session."""

    avro_name: ClassVar[str] = "DriverCommand"

    driver_id: NonEmpty
    # heartbeat_sweep: the owner of the record's partition checks its overdue drivers (the driver id
    # is then a key for that partition, streams.routing.partition_key).
    kind: Literal["assign", "heartbeat_check", "heartbeat_sweep"]
    order_id: str | None = None
    ts: Timestamp


# The two kinds of share of dispatch.supply_demand: a driver partition's available drivers, a request
# partition's demand.
SUPPLY = "drivers"
DEMAND = "requests"
FeedKind = Literal["drivers", "requests"]
Count = Annotated[int, Field(strict=True, ge=0)]


class SupplyDemand(Message):
    """One share of one H3 cell (dispatch.supply_demand, keyed by `feed_key`): kind `drivers`, the
    available drivers of one driver partition in the cell now; kind `requests`, the requests of one
    request partition answered in the cell's last `window_s` seconds, with the assigned and the refused
    ("No available drivers in area") among them. The other kind's counts are 0."""

    avro_name: ClassVar[str] = "SupplyDemand"

    h3: NonEmpty
    resolution: Annotated[int, Field(strict=True, ge=0, le=15)]
    kind: FeedKind
    partition: Count
    available_drivers: Count = 0
    requests: Count = 0
    assigned: Count = 0
    refused: Count = 0
    window_s: Count
    ts: Timestamp

    @property
    def key(self) -> str:
        return feed_key(self.h3, self.kind, self.partition)


class BookingOwner(Message):
    """Who owns a booking (booking_owners, keyed by booking_id): the user whose app may follow it."""

    avro_name: ClassVar[str] = "BookingOwner"

    booking_id: NonEmpty
    user_id: NonEmpty
    ts: Timestamp


def feed_key(cell: str, kind: str, partition: int) -> str:
    """`<h3 cell>/<drivers|requests>/<source partition>`: the shares of one cell from different kinds or
    partitions never overwrite one another in the compacted topic."""
    return f"{cell}/{kind}/{partition}"


# What an answer adds to its restaurant cell's demand: assigned, refused (no driver in the area), or
# other (failed for another reason: expired, invalid request), counted in `requests` only.
ASSIGNED = "assigned"
REFUSED = "refused"
OTHER = "other"


def demand_outcome(status: str, error: str | None) -> str:
    """An answer's demand outcome, as the worker counts it and a replay of the topics does."""
    if status == "assigned":
        return ASSIGNED
    return REFUSED if error == NO_DRIVERS else OTHER


def parse_feed_key(key: str) -> tuple[str, str, int]:
    """(cell, kind, partition) of a `feed_key`; ValueError for anything else."""
    cell, kind, partition = key.split("/")
    if not cell or kind not in (SUPPLY, DEMAND) or not partition.isdigit():
        raise ValueError(f"not a supply/demand key: {key!r}")
    return cell, kind, int(partition)


ALL_MESSAGES: tuple[type[Message], ...] = (
    LocationPing,
    DriverStatus,
    AssignmentRequested,
    AssignmentResponse,
    TripEvent,
    PresenceChanged,
    TrackingUpdate,
    DriverCommand,
    SupplyDemand,
    BookingOwner,
)
