"""Which contract message a topic carries, and a topic name as an operator types it resolved to the broker's."""

from __future__ import annotations

import re

from infra import topics as plan
from infra.topics import TopicNames
from schemas.models import (
    AssignmentRequested,
    AssignmentResponse,
    DriverCommand,
    DriverStatus,
    LocationPing,
    Message,
    PresenceChanged,
    TrackingUpdate,
    TripEvent,
)

# Families with one topic per region ("driver_locations.4_-7").
REGIONAL: dict[str, type[Message]] = {plan.LOCATIONS: LocationPing, plan.REQUESTS: AssignmentRequested}
SINGLE: dict[str, type[Message]] = {
    plan.STATUS: DriverStatus,
    plan.RESPONSES: AssignmentResponse,
    plan.TRIP_EVENTS: TripEvent,
    plan.PRESENCE: PresenceChanged,
    plan.TRACKING: TrackingUpdate,
    plan.DRIVER_COMMANDS: DriverCommand,
}


def unprefixed(names: TopicNames, topic: str) -> str:
    return topic[len(names.prefix):] if names.prefix and topic.startswith(names.prefix) else topic


def model_for(names: TopicNames, topic: str) -> type[Message] | None:
    """The message type of a topic (with or without the deployment's prefix); None for the DLQ or unknown."""
    bare = unprefixed(names, topic)
    if bare in SINGLE:
        return SINGLE[bare]
    family, _, region = bare.rpartition(".")
    return REGIONAL.get(family) if region else None


def resolve(names: TopicNames, topic: str) -> tuple[str | None, str | None]:
    """(exact topic, regex pattern): a whole regional family ("driver_locations") becomes a pattern over its
    regions; any other contract name gets the deployment's prefix; a name already prefixed is kept."""
    bare = unprefixed(names, topic)
    if bare == plan.LOCATIONS:
        return None, names.locations_pattern()
    if bare == plan.REQUESTS:
        return None, names.requests_pattern()
    return names.prefix + bare, None


def matches_pattern(pattern: str, topic: str) -> bool:
    return re.match(pattern, topic) is not None
