"""The Python example of docs/producers.md: a driver and an order in, the order's answer out (aiokafka).

Publishes a driver going online (driver_status) and its position (driver_locations.<region>), both keyed by
the driver id, then an AssignmentRequested (driver_assignment.requests.<region>) keyed by its orderId, in
JSON or in Confluent-framed Avro with the fixed schema ids of schemas/avro/ids.json, and reads
driver_assignment.responses until the order's answer comes. aiokafka's default partitioner is Kafka's
murmur2, as the pipeline's; nothing to configure.

    pip install -r examples/python/requirements.txt   # fastavro only for VALUE_FORMAT=avro
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python examples/python/dispatch_example.py

Settings (environment): KAFKA_BOOTSTRAP_SERVERS, GEODISPATCH_TOPIC_PREFIX, DRIVER_ID, ORDER_ID,
VALUE_FORMAT (json or avro), CONSUMER_GROUP, SETTLE_S, ANSWER_TIMEOUT_S. Prints one JSON line per record
it produced and one with the answer; exits 1 when no answer comes in time.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import struct
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PREFIX = os.environ.get("GEODISPATCH_TOPIC_PREFIX", "")
DRIVER_ID = os.environ.get("DRIVER_ID", "drv-python-example")
ORDER_ID = os.environ.get("ORDER_ID", f"ord-python-{int(time.time() * 1000)}")
VALUE_FORMAT = os.environ.get("VALUE_FORMAT", "json")
CONSUMER_GROUP = os.environ.get("CONSUMER_GROUP", "geodispatch-example-python")
SETTLE_S = float(os.environ.get("SETTLE_S", "2"))
ANSWER_TIMEOUT_S = float(os.environ.get("ANSWER_TIMEOUT_S", "60"))
# The schemas of the repository, where this file lies in examples/python/; copy them beside your code.
SCHEMAS = Path(os.environ.get("GEODISPATCH_SCHEMAS", Path(__file__).resolve().parents[2] / "schemas" / "avro"))

RESTAURANT = (40.7128, -74.006)  # lower Manhattan
CUSTOMER = (40.7589, -73.9851)
DRIVER = (40.7165, -74.006)  # ~400 m north of the restaurant


def region_key(lat: float, lng: float) -> str:
    """The topic's region: trunc(lat/10)_trunc(lng/10), truncating toward zero (40.7128, -74.006: 4_-7)."""
    return f"{math.trunc(lat / 10)}_{math.trunc(lng / 10)}"


def iso(offset_s: float = 0.0) -> str:
    """ISO-8601 in UTC with milliseconds and Z, as the pipeline writes."""
    moment = datetime.now(UTC) + timedelta(seconds=offset_s)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Encoder:
    """JSON, or the Confluent wire format: byte 0, the schema id (4 bytes, big-endian), the Avro body."""

    def __init__(self, value_format: str) -> None:
        if value_format not in ("json", "avro"):
            raise SystemExit(f"VALUE_FORMAT must be json or avro, got {value_format!r}")
        self.avro = value_format == "avro"
        self.schemas: dict[str, tuple[int, object]] = {}
        if self.avro:
            import fastavro  # only needed for Avro

            self._write = fastavro.schemaless_writer
            ids = json.loads((SCHEMAS / "ids.json").read_text())
            for schema_id, filename in ids.items():
                if not schema_id.startswith("_"):
                    raw = json.loads((SCHEMAS / filename).read_text())
                    # Fixed ids: a later version of a schema has a higher id, so the last one read wins.
                    self.schemas[raw["name"]] = (int(schema_id), fastavro.parse_schema(raw))

    def encode(self, name: str, value: dict) -> bytes:
        if not self.avro:
            return json.dumps(value).encode()
        schema_id, schema = self.schemas[name]
        body = io.BytesIO()
        self._write(body, schema, value)
        return struct.pack(">bI", 0, schema_id) + body.getvalue()


async def publish(producer: AIOKafkaProducer, topic: str, key: str, value: bytes) -> None:
    # Keys are UTF-8 strings: the bytes murmur2 hashes are the key's UTF-8 bytes, in every language.
    metadata = await producer.send_and_wait(PREFIX + topic, value, key=key.encode())
    print(json.dumps({"produced": metadata.topic, "partition": metadata.partition, "offset": metadata.offset,
                      "key": key}, ensure_ascii=False), flush=True)


async def await_answer(consumer: AIOKafkaConsumer) -> int:
    seen: set[tuple[str, str]] = set()  # at least once: the same answer may come twice
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            for record in records:
                answer = json.loads(record.value)
                marker = (answer["orderId"], answer["status"])
                if marker in seen:
                    continue
                seen.add(marker)
                if answer["orderId"] == ORDER_ID:
                    print(json.dumps({"answer": answer, "partition": record.partition, "offset": record.offset,
                                      "key": record.key.decode()}, ensure_ascii=False), flush=True)
                    await consumer.commit()
                    return 0
        if batches:  # commit what was handled (with nothing fetched yet, no partition may be assigned)
            await consumer.commit()
    print(f"no answer for {ORDER_ID} within {ANSWER_TIMEOUT_S}s", file=sys.stderr)
    return 1


async def main() -> int:
    encoder = Encoder(VALUE_FORMAT)
    # acks=all and idempotence: an acknowledged record is on every in-sync replica, a retried one is
    # written once. aiokafka's default partitioner is murmur2 of the key bytes, as Kafka's Java client.
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
    # A group of its own that starts from the earliest answer the first time, so that it cannot miss the
    # answer to a request it sends before the group has joined; then from its committed offsets.
    consumer = AIOKafkaConsumer(PREFIX + "driver_assignment.responses", bootstrap_servers=BOOTSTRAP,
                                group_id=CONSUMER_GROUP, auto_offset_reset="earliest", enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        # What driver gateways send: the driver goes online, then reports where it is.
        await publish(producer, "driver_status", DRIVER_ID, encoder.encode("DriverStatus", {
            "driver_id": DRIVER_ID, "online": True, "eligibility": "ACTIVE", "ts": iso(-1)}))
        await publish(producer, f"driver_locations.{region_key(*DRIVER)}", DRIVER_ID, encoder.encode(
            "LocationPing", {"driver_id": DRIVER_ID, "lat": DRIVER[0], "lng": DRIVER[1], "speed_mps": 0.0,
                             "heading_deg": None, "accuracy_m": None, "ts": iso()}))
        # Pings and requests are read by different consumers: give the driver a moment to be indexed.
        await asyncio.sleep(SETTLE_S)
        # What the order service sends, keyed by orderId (any other key is dead-lettered).
        geo = region_key(*RESTAURANT)
        request = {
            "eventId": f"evt-{ORDER_ID}", "eventType": "AssignmentRequested", "occurredAt": iso(),
            "orderId": ORDER_ID, "geoKey": geo,
            "restaurantLatitude": RESTAURANT[0], "restaurantLongitude": RESTAURANT[1],
            "customerLatitude": CUSTOMER[0], "customerLongitude": CUSTOMER[1],
            "preparationTime": 10.0, "radius": 5.0, "totalAmount": 34.97, "specialInstructions": None,
            # In Avro items is the JSON text of the list (its shape belongs to the order service).
            "items": json.dumps([{"name": "pizza", "quantity": 1}]) if encoder.avro
            else [{"name": "pizza", "quantity": 1}],
        }
        await publish(producer, f"driver_assignment.requests.{geo}", ORDER_ID,
                      encoder.encode("AssignmentRequested", request))
        return await await_answer(consumer)
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
