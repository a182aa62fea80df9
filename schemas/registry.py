"""A client of a Confluent-compatible schema registry: the few calls the codec and `geodispatch schemas register`
make (GET /schemas/ids/{id}, POST /subjects/{subject}/versions), and the subjects the project registers.

Plain blocking HTTP (urllib, with a timeout) on purpose: the codec calls it at most once per schema id it
has not seen (the answer is cached for good: a registry never changes what an id means), and the worker
calls it off the event loop (`Codec.prefetch` runs it in a thread), so no asynchronous client is needed,
and the producer library that installs without the worker gets no new dependency.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from infra import topics as plan
from infra.topics import TopicNames

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
DEFAULT_TIMEOUT_S = 2.0

# The schema each topic of the contract carries, by the unprefixed topic name (regional families expand
# per region). Inputs first, then outputs; the dead-letter topic has no Avro value schema.
REGIONAL_SUBJECTS: dict[str, str] = {plan.LOCATIONS: "LocationPing", plan.REQUESTS: "AssignmentRequested"}
SINGLE_SUBJECTS: dict[str, str] = {
    plan.STATUS: "DriverStatus",
    plan.TRIP_EVENTS: "TripEvent",
    plan.BOOKING_OWNERS: "BookingOwner",
    plan.RESPONSES: "AssignmentResponse",
    plan.PRESENCE: "PresenceChanged",
    plan.TRACKING: "TrackingUpdate",
    plan.DRIVER_COMMANDS: "DriverCommand",
    plan.SUPPLY_DEMAND: "SupplyDemand",
}


def subjects(names: TopicNames, regions: tuple[str, ...]) -> dict[str, str]:
    """`<topic>-value` (Confluent's TopicNameStrategy) for every input and output topic -> its record name."""
    out: dict[str, str] = {}
    for family, name in REGIONAL_SUBJECTS.items():
        for region in regions:
            topic = names.locations(region) if family == plan.LOCATIONS else names.requests(region)
            out[f"{topic}-value"] = name
    for bare, name in SINGLE_SUBJECTS.items():
        out[f"{names.prefix}{bare}-value"] = name
    return out


class RegistryError(Exception):
    """The registry could not be asked (status None), or answered with an HTTP error (its status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SchemaNotFound(RegistryError):
    """The registry does not know this schema id (HTTP 404)."""


class NotAvro(RegistryError):
    """The registry's schema under an id is not an Avro schema we can parse (JSON Schema, Protobuf)."""


@dataclass(frozen=True)
class RegistryClient:
    """One registry, by its base URL (Apicurio's Confluent API is at <host>/apis/ccompat/v7)."""

    url: str
    timeout_s: float = DEFAULT_TIMEOUT_S

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url.rstrip("/") + path, data=data, method=method,
            headers={"Accept": CONTENT_TYPE, **({"Content-Type": CONTENT_TYPE} if data else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 (URL from settings)
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            if exc.code == 404:
                raise SchemaNotFound(f"{method} {path}: 404 {detail}", 404) from None
            raise RegistryError(f"{method} {path}: HTTP {exc.code} {detail}", exc.code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, timed out, not JSON
            raise RegistryError(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema (parsed JSON) registered under a global id; SchemaNotFound if there is none."""
        answer = self._call("GET", f"/schemas/ids/{schema_id}")
        kind = answer.get("schemaType", "AVRO") if isinstance(answer, dict) else None
        if kind != "AVRO" or not isinstance(answer.get("schema"), str):
            raise NotAvro(f"schema id {schema_id} is not an Avro schema ({kind})")
        try:
            return json.loads(answer["schema"])
        except ValueError as exc:
            raise NotAvro(f"schema id {schema_id} is not JSON: {exc}") from None

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Registers a schema under a subject (a no-op returning the same id when it is already there)."""
        path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        answer = self._call("POST", path, {"schema": json.dumps(schema), "schemaType": "AVRO"})
        return int(answer["id"])
