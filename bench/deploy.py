"""One isolated pipeline for a benchmark run: its own topic prefix, Redis prefix and app id on the
shared broker and Redis, real workers as subprocesses, and what is measured of them from outside
(HTTP /stats, topic end offsets, the process's CPU and RSS)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from infra.cleanup import remove_deployment
from infra.topics import TopicNames

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PYTHON = sys.executable
CITY_REGION = "4_-7"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sampler(threading.Thread):
    """Samples a process's RSS and CPU time every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (t, rss MiB, cpu seconds)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                cpu = self.process.cpu_times()
                self.samples.append((time.time(), self.process.memory_info().rss / 2**20, cpu.user + cpu.system))
            except psutil.Error:
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def peak_rss_mib(pid: int) -> float | None:
    """The kernel's high-water mark of the process's resident set (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    started_at: float

    @property
    def pid(self) -> int:
        return self.process.pid

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/stats")
        if status != 200:
            raise RuntimeError(f"/stats answered {status}: {body}")
        return body

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Until /stats shows the index rebuilt for this worker's partitions; seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.stats().get("index", {}).get("epoch"):
                    return time.time() - self.started_at
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def counter_sum(section: dict[str, float] | None) -> float:
    return sum((section or {}).values())


def pings_seen(stats: dict[str, Any]) -> int:
    """Every ping the worker finished with, whatever the outcome (accepted, throttled, stale)."""
    return int(counter_sum(stats.get("pings")))


@dataclass
class Deployment:
    """One isolated pipeline: topics `<prefix>...`, Redis keys `gd:<prefix>...`, app `<prefix>geodispatch`."""

    run_dir: Path
    prefix: str
    partitions: int = 4
    regions: tuple[str, ...] = (CITY_REGION,)
    app_id: str = "geodispatch"
    redis_prefix: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.redis_prefix:
            self.redis_prefix = f"gd:{self.prefix}"

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.prefix)

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP,
            REDIS_URL=REDIS_URL,
            GEODISPATCH_TOPIC_PREFIX=self.prefix,
            GEODISPATCH_REDIS_PREFIX=self.redis_prefix,
            GEODISPATCH_APP_ID=self.app_id,
            GEODISPATCH_PARTITIONS=str(self.partitions),
            GEODISPATCH_REGIONS=",".join(self.regions),
            GEODISPATCH_LOG_FORMAT="json",
            # The scenarios leave pauses between load phases; a city that pinged minutes ago must
            # stay online and offered (production drivers ping every few seconds without pause).
            # 20 minutes covers the pings scenario, whose 100,000-driver city alone takes 4-5 minutes
            # to load: with 6 the ping ramp ran while the worker timed out most of the city.
            GEODISPATCH_HEARTBEAT_INTERVAL_S="120",
            GEODISPATCH_MISSED_HEARTBEATS="10",
            GEODISPATCH_LOCATION_MAX_AGE_S="3600",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def cli(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [PYTHON, "-m", "streams", *args], env=self.env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"geodispatch {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def apply_topics(self) -> None:
        """The topic plan of infra/topics.py for this prefix (what `geodispatch topics apply` does)."""
        from aiokafka.admin import AIOKafkaAdminClient

        from infra.admin import apply_plan
        from infra.topics import plan

        async def apply() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
            await admin.start()
            try:
                await apply_plan(admin, plan(self.names, self.regions, self.partitions, 1, self.app_id))
            finally:
                await admin.close()

        asyncio.run(apply())

    def start_worker(self, name: str = "w1", data_dir: Path | None = None, **env: str) -> Worker:
        port = free_port()
        data_dir = data_dir or self.run_dir / f"{self.prefix}{self.app_id}-{name}"
        log_path = self.run_dir / f"{self.prefix}{self.app_id}-{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [PYTHON, "-m", "bench.worker"],
            env=self.env(GEODISPATCH_WEB_PORT=str(port), GEODISPATCH_DATA_DIR=str(data_dir), **env),
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        worker = Worker(name, process, port, log_path, time.time())
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    # -- helpers run in their own processes: the load never shares the measuring process -----------

    def tool(self, module: str, *args: str, timeout: float = 300, capture: bool = True) -> dict[str, Any]:
        """Runs `python -m <module> args` and returns the JSON document it prints last."""
        result = subprocess.run(
            [PYTHON, "-m", module, *args],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{module} {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def spawn(self, module: str, *args: str, out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [PYTHON, "-m", module, *args],
            env=self.env(),
            cwd=ROOT,
            stdout=open(out, "wb"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT if out.suffix == ".log" else open(out.with_suffix(".err"), "wb"),  # noqa: SIM115
        )

    # -- cleanup: only what this deployment created ----------------------------------------------

    def cleanup(self) -> None:
        self.stop_all()
        for problem in asyncio.run(remove_deployment(BOOTSTRAP, REDIS_URL, self.prefix, self.redis_prefix)):
            print(f"bench: {problem}", file=sys.stderr)


async def end_offsets(topics: list[str]) -> dict[str, int]:
    """The sum of end offsets of each topic (records ever written, on a non-compacted topic)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await consumer.start()
    try:
        totals = {}
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await consumer._client.force_metadata_update()  # noqa: SLF001 (topic created after start)
                parts = consumer.partitions_for_topic(topic) or set()
            offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in parts]) if parts else {}
            totals[topic] = sum(offsets.values())
        return totals
    finally:
        await consumer.stop()


class OffsetWatcher:
    """Keeps one consumer open to read end offsets cheaply and often (input lag from outside)."""

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self._consumer = None
        self._parts: list = []

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        self._consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
        await self._consumer.start()
        await self._consumer._client.force_metadata_update()  # noqa: SLF001
        for topic in self.topics:
            for p in self._consumer.partitions_for_topic(topic) or ():
                self._parts.append(TopicPartition(topic, p))

    async def total(self) -> int:
        return sum((await self._consumer.end_offsets(self._parts)).values())

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
