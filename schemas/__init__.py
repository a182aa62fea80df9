"""Message shapes of the public contract: Avro schemas (the truth), pydantic mirrors and the codec."""

from schemas.codec import Codec, InvalidMessage, default_codec
from schemas.models import (
    AssignmentRequested,
    AssignmentResponse,
    DriverCommand,
    DriverStatus,
    LocationPing,
    PresenceChanged,
    TrackingUpdate,
    TripEvent,
)

__all__ = [
    "AssignmentRequested",
    "AssignmentResponse",
    "Codec",
    "DriverCommand",
    "DriverStatus",
    "InvalidMessage",
    "LocationPing",
    "PresenceChanged",
    "TrackingUpdate",
    "TripEvent",
    "default_codec",
]
