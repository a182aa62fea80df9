"""The changelog-backed tables, each fronted by an in-memory cache of this worker's partitions.

A Faust table write is a changelog record; a read from RocksDB is a lookup and a decode. The cache
makes reads free and is dropped on every rebalance, because a partition this worker gave up may
have changed elsewhere before it comes back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faust
import orjson

from streams.logic.sessions import DriverSession


def raw_table(app: faust.App, name: str, partitions: int) -> Any:
    return app.Table(
        name,
        default=None,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
    )


class SessionStore:
    """Driver sessions by driver id. Writes must happen while processing the driver's own record
    (Faust sends the changelog record to that record's partition)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.cache: dict[str, DriverSession] = {}

    def get(self, driver_id: str) -> DriverSession | None:
        session = self.cache.get(driver_id)
        if session is None:
            raw = self.table.get(driver_id.encode())
            if raw is not None:
                session = DriverSession.from_dict(orjson.loads(raw))
                self.cache[driver_id] = session
        return session

    def put(self, session: DriverSession) -> None:
        self.cache[session.driver_id] = session
        self.table[session.driver_id.encode()] = orjson.dumps(session.to_dict())

    def forget_all(self) -> None:
        self.cache.clear()

    def load_all(self) -> Iterator[DriverSession]:
        """Every session of this worker's partitions, read from the table into the cache."""
        self.cache.clear()
        for raw in self.table.values():
            session = DriverSession.from_dict(orjson.loads(raw))
            self.cache[session.driver_id] = session
            yield session


class DecisionStore:
    """Assignment decisions by order id: the answer an order got, to give again on redelivery."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, order_id: str) -> dict | None:
        raw = self.table.get(order_id.encode())
        return orjson.loads(raw) if raw is not None else None

    def put(self, order_id: str, decision: dict) -> None:
        self.table[order_id.encode()] = orjson.dumps(decision)
