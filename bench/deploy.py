"""One isolated pipeline for a benchmark run: its own topic prefix, Redis prefix and app id on the
shared broker and Redis, real workers as subprocesses, and what is measured of them from outside
(HTTP /stats, topic end offsets, the process's CPU and RSS)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil

from infra.local import BOOTSTRAP, PYTHON, REDIS_URL, ROOT, LocalDeployment, WorkerProcess

__all__ = ["BOOTSTRAP", "REDIS_URL", "ROOT", "Deployment", "WorkerProcess"]
CITY_REGION = "4_-7"


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


def listener_pid(address: str) -> int | None:
    """The pid of the process listening on host:port on this machine (the broker, Redis), if any."""
    port = int(address.rsplit(":", 1)[1])
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return connection.pid
    return None


def redis_cpu_seconds(url: str = REDIS_URL) -> float:
    """The Redis server's own CPU time so far (user + system), as its INFO reports it."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        cpu = client.info("cpu")
    finally:
        client.close()
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def counter_sum(section: dict[str, float] | None) -> float:
    return sum((section or {}).values())


def pings_seen(stats: dict[str, Any]) -> int:
    """Every ping the worker finished with, whatever the outcome (accepted, throttled, stale)."""
    return int(counter_sum(stats.get("pings")))


@dataclass
class Deployment(LocalDeployment):
    """One isolated pipeline: topics `<prefix>...`, Redis keys `gd:<prefix>...`, app `<prefix><app id>`,
    its workers started through bench.worker (which can force the event loop)."""

    partitions: int = 4
    regions: tuple[str, ...] = (CITY_REGION,)
    worker_command: tuple[str, ...] = ("bench.worker",)
    defaults: ClassVar[dict[str, str]] = {
        # The scenarios leave pauses between load phases; a city that pinged minutes ago must
        # stay online and offered (production drivers ping every few seconds without pause).
        # 20 minutes covers the pings scenario, whose 100,000-driver city alone takes minutes to
        # load: with 6 the ping ramp ran while the worker timed out most of the city.
        "GEODISPATCH_HEARTBEAT_INTERVAL_S": "120",
        "GEODISPATCH_MISSED_HEARTBEATS": "10",
        "GEODISPATCH_LOCATION_MAX_AGE_S": "3600",
    }

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
