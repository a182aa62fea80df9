"""Integration harness: each test gets its own topic prefix, Redis key prefix and consumer groups on
the real broker and Redis, runs real workers as subprocesses, and reads what they publish."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from infra.local import BOOTSTRAP, PYTHON, REDIS_URL, ROOT, LocalDeployment, WorkerProcess, free_port

__all__ = ["BOOTSTRAP", "PYTHON", "REDIS_URL", "ROOT", "Deployment", "WorkerProcess", "free_port", "run",
           "topic_with", "wait_for"]


async def topic_with(name: str, partitions: int, records: Iterable[tuple[int, bytes, bytes]]) -> str:
    """Creates the topic `name` with `partitions` partitions and writes `records` (partition, key,
    value) to it, in order; returns its name."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5)
    await producer.start()
    try:
        for partition, key, value in records:
            await producer.send(name, value, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return name


def run(coro):
    return asyncio.run(coro)


@dataclass
class Deployment(LocalDeployment):
    """One isolated pipeline on the shared broker and Redis, with drivers' liveness on a test's clock."""

    defaults: ClassVar[dict[str, str]] = {
        "GEODISPATCH_HEARTBEAT_INTERVAL_S": "1",
        "GEODISPATCH_MISSED_HEARTBEATS": "2",
        "GEODISPATCH_MIN_PING_INTERVAL_S": "0",
        "GEODISPATCH_TRACKING_MAX_PER_S": "1",
    }

    def start_gateway(self, secret: str, name: str = "gateway", **env: str) -> WorkerProcess:
        """`geodispatch gateway` on the deployment's topics and a port of its own, stopped with its workers."""
        port = free_port()
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen([PYTHON, "-m", "streams", "gateway", "--port", str(port)],
                                       env=self.env(GEODISPATCH_JWT_SECRET=secret, **env), cwd=ROOT,
                                       stdout=log_file, stderr=subprocess.STDOUT)
        gateway = WorkerProcess(name, process, port, log_path, self.workdir)
        self.workers.append(gateway)
        return gateway

    # -- Kafka ------------------------------------------------------------------------------------

    def produce(self, topic: str, records: list[tuple[bytes | None, bytes]], partition: int | None = None,
                headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None) -> None:
        async def send() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
            await producer.start()
            try:
                for key, value in records:
                    await producer.send_and_wait(topic, value, key=key, partition=partition, headers=headers,
                                                 timestamp_ms=timestamp_ms)
            finally:
                await producer.stop()

        run(send())

    def read(self, topic: str, count: int, timeout: float = 30.0) -> list[ConsumerRecord]:
        """At least `count` records of `topic` from the beginning, or whatever came within timeout."""

        async def consume() -> list[ConsumerRecord]:
            consumer = AIOKafkaConsumer(
                topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                group_id=None,
            )
            await consumer.start()
            records: list[ConsumerRecord] = []
            deadline = time.monotonic() + timeout
            try:
                while len(records) < count and time.monotonic() < deadline:
                    batch = await consumer.getmany(timeout_ms=200)
                    for part in batch.values():
                        records.extend(part)
            finally:
                await consumer.stop()
            return records

        return run(consume())

    def read_all(self, topic: str, timeout: float = 120.0) -> list[ConsumerRecord]:
        """Every record of `topic` up to its end offsets as of the call. Unlike read(), a busy
        machine makes it slower, not shorter: a checker fed a short read would report losses."""

        async def consume() -> list[ConsumerRecord]:
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                                        enable_auto_commit=False, group_id=None)
            await consumer.start()
            records: list[ConsumerRecord] = []
            deadline = time.monotonic() + timeout
            try:
                while not consumer.assignment():
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no partitions of {topic} within {timeout}s")
                    await asyncio.sleep(0.1)
                ends = await consumer.end_offsets(list(consumer.assignment()))
                done = {tp for tp, end in ends.items() if end == 0}
                while len(done) < len(ends):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"could not read {topic} to its end within {timeout}s")
                    batch = await consumer.getmany(timeout_ms=200)
                    for tp, part in batch.items():
                        records.extend(r for r in part if r.offset < ends[tp])
                        if part and part[-1].offset >= ends[tp] - 1:
                            done.add(tp)
            finally:
                await consumer.stop()
            return records

        return run(consume())


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, message: str = "condition"):
    """Polls until predicate() returns something truthy; returns it or fails with the message."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")
