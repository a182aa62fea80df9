"""Seed 002's channels and who may subscribe to them: pure functions of a token's claims and what the
gateway knows of a booking, unit-tested alone."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

ChannelKind = Literal["tracking", "events", "presence", "map"]
ROLES = ("client", "driver", "support", "admin")
# Roles that may follow any booking or user, each subscription written to the audit log (seed 002 §5).
BACKOFFICE_ROLES = frozenset({"support", "admin"})

_BOOKING_TRACKING = re.compile(r"^booking\.(?P<id>[^.\s]{1,256})\.tracking$")
_USER_EVENTS = re.compile(r"^user\.(?P<id>[^.\s]{1,256})\.events$")
# Fleet-wide channels: every driver's presence, and the operator map's snapshots.
_FLEET_CHANNELS: dict[str, ChannelKind] = {"presence": "presence", "map": "map"}


@dataclass(frozen=True)
class Channel:
    name: str
    kind: ChannelKind
    # The booking of a tracking channel, the user of an events channel; None for a fleet-wide one.
    subject: str | None = None


class Refused(Exception):
    """A subscription that may not happen: `error` is one of unknown_channel, forbidden, invalid_request."""

    def __init__(self, error: str, detail: str) -> None:
        self.error = error
        self.detail = detail
        super().__init__(f"{error}: {detail}")


def parse_channel(name: object) -> Channel:
    if not isinstance(name, str) or not name:
        raise Refused("invalid_request", "a channel name (a string) is required")
    if match := _BOOKING_TRACKING.match(name):
        return Channel(name, "tracking", match["id"])
    if match := _USER_EVENTS.match(name):
        return Channel(name, "events", match["id"])
    if name in _FLEET_CHANNELS:
        return Channel(name, _FLEET_CHANNELS[name])
    raise Refused("unknown_channel", f"{name!r} is none of booking.{{id}}.tracking, user.{{id}}.events, "
                                     "presence, map")


def tracking_channel(booking_id: str) -> str:
    return f"booking.{booking_id}.tracking"


def events_channel(user_id: str) -> str:
    return f"user.{user_id}.events"


@dataclass(frozen=True)
class Subscriber:
    """Who a verified token says the caller is."""

    user_id: str
    role: str
    scopes: tuple[str, ...]
    expires_at: float

    @property
    def backoffice(self) -> bool:
        return self.role in BACKOFFICE_ROLES


def subscriber_from_claims(claims: Mapping[str, Any]) -> Subscriber:
    """The caller of a token whose signature and expiry are already checked (infra.auth.Verifier)."""
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not sub:
        raise Refused("invalid_token", "the token has no 'sub' (the user id)")
    if role not in ROLES:
        raise Refused("invalid_token", f"the token's 'role' must be one of {', '.join(ROLES)}")
    return Subscriber(sub, role, channel_scopes(claims), float(claims["exp"]))


def channel_scopes(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The channel patterns a token may subscribe to: seed 002's `scopes` (a list, or one string of
    space-separated patterns), `*` matching any part of a name."""
    value = claims.get("scopes")
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list | tuple):
        return tuple(str(item) for item in value)
    return ()


@dataclass(frozen=True)
class Booking:
    """What the gateway knows of a booking: its owner (booking_owners) and its driver while assigned."""

    owner: str | None = None
    driver: str | None = None


def check_subscription(subscriber: Subscriber, channel: Channel, booking: Booking | None) -> None:
    """Raises Refused unless the channel is in the token's scopes and the role's rule lets it in:
    a client only for bookings it owns, a driver only while assigned, support and admin any."""
    if not any(fnmatch.fnmatchcase(channel.name, pattern) for pattern in subscriber.scopes):
        raise Refused("forbidden", f"the token's scopes do not include {channel.name}")
    if subscriber.backoffice:
        return
    if channel.kind == "events":
        if channel.subject != subscriber.user_id:
            raise Refused("forbidden", "a user's events are for that user only")
        return
    if channel.kind != "tracking":
        raise Refused("forbidden", f"{channel.name} is for support and admin only")
    if subscriber.role == "client" and (booking is None or booking.owner != subscriber.user_id):
        raise Refused("forbidden", f"booking {channel.subject} is not one of this client's")
    if subscriber.role == "driver" and (booking is None or booking.driver != subscriber.user_id):
        raise Refused("forbidden", f"this driver is not assigned to booking {channel.subject}")
