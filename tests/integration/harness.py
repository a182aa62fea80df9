"""Integration harness: each test gets its own topic prefix, Redis key prefix and consumer groups on
the real broker and Redis, runs real workers as subprocesses, and reads what they publish."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from infra.cleanup import remove_deployment
from infra.topics import TopicNames

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PYTHON = sys.executable


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(coro):
    return asyncio.run(coro)


def _code_of(checkout: Path) -> dict[str, str]:
    """The environment that makes Python import the packages of `checkout` rather than this one's
    (installed in editable mode, found after PYTHONPATH)."""
    return {} if checkout == ROOT else {"PYTHONPATH": str(checkout)}


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    port: int
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the worker answers /health and has been assigned partitions (index rebuilt)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                status, body = self.get("/stats")
                if status == 200 and body.get("index", {}).get("epoch"):
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker not ready within {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Deployment:
    """One isolated pipeline on the shared broker and Redis."""

    tmp: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}.")
    partitions: int = 2
    regions: tuple[str, ...] = ("4_-7", "0_0")
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    # The shared broker and Redis unless a test brings servers of its own (fault tests restart them).
    bootstrap: str = BOOTSTRAP
    redis_url: str = REDIS_URL

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.prefix)

    @property
    def redis_prefix(self) -> str:
        return f"gd:{self.prefix}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            REDIS_URL=self.redis_url,
            GEODISPATCH_TOPIC_PREFIX=self.prefix,
            GEODISPATCH_REDIS_PREFIX=self.redis_prefix,
            GEODISPATCH_PARTITIONS=str(self.partitions),
            GEODISPATCH_REGIONS=",".join(self.regions),
            GEODISPATCH_LOG_FORMAT="json",
            GEODISPATCH_HEARTBEAT_INTERVAL_S="1",
            GEODISPATCH_MISSED_HEARTBEATS="2",
            GEODISPATCH_MIN_PING_INTERVAL_S="0",
            GEODISPATCH_TRACKING_MAX_PER_S="1",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def cli(self, *args: str, check: bool = True, timeout: float = 120, checkout: Path = ROOT,
            **env: str) -> subprocess.CompletedProcess:
        """`geodispatch ARGS`, of this checkout or of another one (a release's worktree)."""
        result = subprocess.run(
            [PYTHON, "-m", "streams", *args],
            env=self.env(**_code_of(checkout), **env),
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"geodispatch {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def apply_topics(self) -> None:
        self.cli("topics", "apply")

    def start_worker(self, name: str = "w1", checkout: Path = ROOT, **env: str) -> WorkerProcess:
        """A worker of this checkout, or of another one (a release's worktree), on its own port, with a
        data directory named after it."""
        port = free_port()
        data_dir = self.tmp / f"worker-{name}"
        log_path = self.tmp / f"worker-{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [PYTHON, "-m", "streams", "worker"],
            env=self.env(GEODISPATCH_WEB_PORT=str(port), GEODISPATCH_DATA_DIR=str(data_dir), **_code_of(checkout),
                         **env),
            cwd=checkout,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        worker = WorkerProcess(process, port, log_path)
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    def cleanup(self) -> None:
        """Stops the workers and removes the deployment's topics and Redis keys from the shared servers."""
        self.stop_all()
        for problem in asyncio.run(remove_deployment(self.bootstrap, self.redis_url, self.prefix, self.redis_prefix)):
            print(f"harness: {problem}", file=sys.stderr)

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
