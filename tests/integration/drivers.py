"""Helpers for the driver-sessions integration tests: what a driver gateway and the order service
send, and how a test reads the sessions API and the published topics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import h3

from tests.integration.harness import Deployment, WorkerProcess, wait_for

NYC = (40.7128, -74.006)
SESSION_FIELDS = {"driver_id", "online", "last_loc", "trip_id", "eligibility"}
LAST_LOC_FIELDS = {"lat", "lng", "h3_res9", "speed_mps", "heading_deg", "ts"}
TRACKING_FIELDS = {"type", "booking_id", "driver_id", "lat", "lng", "bearing", "speed_kmh", "timestamp"}
PRESENCE_FIELDS = {"driver_id", "online", "reason", "last_seen", "ts"}


def iso(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_plus(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def send_status(dep: Deployment, driver: str, online: bool = True, eligibility: str | None = "ACTIVE",
                ts: datetime | None = None) -> None:
    value: dict[str, Any] = {"driver_id": driver, "online": online, "ts": iso(ts)}
    if eligibility is not None:
        value["eligibility"] = eligibility
    dep.produce(dep.names.status, [(driver.encode(), json.dumps(value).encode())])


def ping_value(driver: str, lat: float, lng: float, ts: datetime | None = None, **extra: Any) -> bytes:
    value = {"driver_id": driver, "lat": lat, "lng": lng, "speed_mps": 8.3, "heading_deg": 90.0,
             "accuracy_m": 5.0, "ts": iso(ts), **extra}
    return json.dumps(value).encode()


def send_ping(dep: Deployment, driver: str, lat: float = NYC[0], lng: float = NYC[1], ts: datetime | None = None,
              region: str = "4_-7", partition: int | None = None, **extra: Any) -> None:
    dep.produce(dep.names.locations(region), [(driver.encode(), ping_value(driver, lat, lng, ts, **extra))],
                partition=partition)


def send_trip(dep: Deployment, driver: str, order: str, status: str, ts: datetime | None = None) -> None:
    value = {"orderId": order, "driverId": driver, "status": status, "ts": iso(ts)}
    dep.produce(dep.names.trip_events, [(driver.encode(), json.dumps(value).encode())])


def send_assign(dep: Deployment, driver: str, order: str) -> None:
    value = {"driver_id": driver, "kind": "assign", "order_id": order, "ts": iso()}
    dep.produce(dep.names.driver_commands, [(driver.encode(), json.dumps(value).encode())])


def cell9(lat: float = NYC[0], lng: float = NYC[1]) -> str:
    return h3.latlng_to_cell(lat, lng, 9)


def session(worker: WorkerProcess, driver: str) -> tuple[int, Any]:
    return worker.get(f"/driver-sessions/sessions/{driver}")


def nearby(worker: WorkerProcess, h3_cell: str, k: int | None = None, limit: int | None = None) -> dict:
    query = f"h3={h3_cell}" + (f"&k={k}" if k is not None else "") + (f"&limit={limit}" if limit is not None else "")
    status, body = worker.get(f"/driver-sessions/sessions/nearby?{query}")
    assert status == 200, body
    return body


def wait_session(worker: WorkerProcess, driver: str, predicate, timeout: float = 30.0,
                 message: str = "the session") -> dict:
    def check():
        status, body = session(worker, driver)
        return body if status == 200 and predicate(body) else None

    return wait_for(check, timeout=timeout, message=f"{driver}: {message}")


def wait_nearby(worker: WorkerProcess, h3_cell: str, predicate, k: int | None = None, timeout: float = 30.0,
                message: str = "nearby") -> dict:
    def check():
        body = nearby(worker, h3_cell, k)
        return body if predicate(body["drivers"]) else None

    return wait_for(check, timeout=timeout, message=message)


def decoded(records) -> list[dict]:
    return [json.loads(r.value) for r in records]


def delete_redis_keys(deployment: Deployment, match: str = "*", keep: tuple[str, ...] = ()) -> int:
    """Deletes this deployment's keys only (other tests share the Redis server): those under its
    prefix matching `match`, but for the ones named in `keep`."""
    client = deployment.redis()
    try:
        keys = [k for k in client.scan_iter(match=f"{deployment.redis_prefix}{match}", count=1000) if k not in keep]
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()
