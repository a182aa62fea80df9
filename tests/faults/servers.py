"""A Kafka broker and a Redis server, or a three-broker Kafka cluster and a Redis Cluster, of a fault
test's own, on free ports under its tmp dir, so that the test can kill and restart them without
touching the shared ones everybody else uses."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import redis

from infra.local import free_port_run
from tests.integration.harness import ROOT, free_port

KAFKA_SH = ROOT / "infra" / "kafka" / "kafka.sh"
CLUSTER_SH = ROOT / "infra" / "cluster.sh"


def _alive(pid: int) -> bool:
    """Whether pid still runs. The broker is not our child (kafka.sh disowns it) and this container's
    pid 1 may not reap orphans, so a zombie counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


class Broker:
    """A single-node KRaft broker started through infra/kafka/kafka.sh with its own ports and data.

    `worker_listeners` (listener name -> the port it advertises) adds a PLAINTEXT listener per name on
    a port of its own. A client bootstrapped there is told the advertised address, so one behind a
    proxy (tests/faults/links.py) keeps going through it: through the default listener, which
    advertises the broker's own port, it would connect around the proxy after its first request."""

    def __init__(self, tmp: Path, worker_listeners: Mapping[str, int] | None = None) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        self.data_dir = tmp / "kafka"
        self.advertised = dict(worker_listeners or {})
        self.listener_ports = {name: free_port() for name in self.advertised}

    def listener(self, name: str) -> str:
        """Where the broker listens for `name`'s clients (a proxy's upstream)."""
        return f"127.0.0.1:{self.listener_ports[name]}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None

    def _script(self, command: str) -> None:
        # After a SIGKILL the controller refuses the restarted broker until the dead one's session
        # expires (broker.session.timeout.ms, 9 s by default): a shorter one keeps the test short.
        extra = self.data_dir.parent / "kafka-extra.properties"
        extra.write_text("broker.session.timeout.ms=4000\nbroker.heartbeat.interval.ms=1000\n"
                         + worker_listener_config(self.port, self.controller_port, self.listener_ports,
                                                  self.advertised))
        env = dict(os.environ, KAFKA_PORT=str(self.port), KAFKA_CONTROLLER_PORT=str(self.controller_port),
                   KAFKA_DATA_DIR=str(self.data_dir), KAFKA_EXTRA_CONFIG=str(extra))
        result = subprocess.run([str(KAFKA_SH), command], env=env, capture_output=True, text=True, timeout=240)
        if result.returncode != 0:
            raise AssertionError(f"kafka.sh {command} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> float:
        """Starts (or restarts on the same data) and returns once it answers metadata requests."""
        started = time.monotonic()
        self._script("up")
        return time.monotonic() - started

    def signal(self, sig: signal.Signals, timeout: float = 60.0) -> float:
        """Sends sig to the broker's JVM and waits for it to exit; returns how long it took."""
        pid = self.pid
        assert pid is not None and _alive(pid), "the test's broker is not running"
        started = time.monotonic()
        os.kill(pid, sig)
        if not _wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
        return time.monotonic() - started

    def close(self) -> None:
        pid = self.pid
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)

    def log_tail(self, lines: int = 40) -> str:
        log = self.data_dir / "logs" / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def worker_listener_config(port: int, controller_port: int, listening: Mapping[str, int],
                           advertised: Mapping[str, int]) -> str:
    """The broker's listener keys with one more PLAINTEXT listener per name: appended to
    server.properties, where a later key overrides the template's."""
    if not listening:
        return ""
    names = sorted(listening)
    listeners = [f"PLAINTEXT://127.0.0.1:{port}", f"CONTROLLER://127.0.0.1:{controller_port}",
                 *(f"{n}://127.0.0.1:{listening[n]}" for n in names)]
    advertise = [f"PLAINTEXT://127.0.0.1:{port}", *(f"{n}://127.0.0.1:{advertised[n]}" for n in names)]
    protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT", *(f"{n}:PLAINTEXT" for n in names)]
    return (f"listeners={','.join(listeners)}\nadvertised.listeners={','.join(advertise)}\n"
            f"listener.security.protocol.map={','.join(protocols)}\n")


class RedisServer:
    """A redis-server with its own port and directory, no persistence: a restart comes back empty."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid_file = self.dir / "redis.pid"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        subprocess.run(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--daemonize", "yes",
             "--pidfile", str(self.pid_file), "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"),
             "--save", "", "--appendonly", "no"],
            check=True, timeout=30,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server on {self.port} did not answer:\n{(self.dir / 'redis.log').read_text()}")

    def wipe(self) -> float:
        """SHUTDOWN NOSAVE, then start again empty; returns how long Redis was unavailable."""
        started = time.monotonic()
        pid = self.pid
        # redis-cli, not redis-py: redis-py retries a command whose connection drops, and SHUTDOWN
        # always drops it, which kept Redis down seconds longer than the fault intends.
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True, timeout=10)
        if pid is not None:
            _wait_gone(pid, 10)
        self.start()
        return time.monotonic() - started

    def close(self) -> None:
        pid = self.pid
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)


class Cluster:
    """Three Kafka nodes and a Redis Cluster of three primaries with a replica each, of a fault test's
    own (infra/cluster.sh on free ports, data under its tmp dir)."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "cluster"
        self.home.mkdir(parents=True, exist_ok=True)
        # One run for both, so that the brokers and the Redis nodes cannot pick the same ports.
        self.kafka_base = free_port_run(12, bus_offset=10000)
        self.redis_base = self.kafka_base + 6
        # As for the single broker: the controller takes a SIGKILLed broker back once its session expired.
        self.extra = self.home / "kafka-extra.properties"
        self.extra.write_text("broker.session.timeout.ms=4000\nbroker.heartbeat.interval.ms=1000\n")

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.kafka_base + 2 * n}" for n in range(3))

    @property
    def redis_nodes(self) -> str:
        return ",".join(f"127.0.0.1:{self.redis_base + n}" for n in range(6))

    def script(self, *args: str) -> str:
        env = dict(os.environ, CLUSTER_HOME=str(self.home), CLUSTER_KAFKA_PORT=str(self.kafka_base),
                   CLUSTER_REDIS_PORT=str(self.redis_base), KAFKA_EXTRA_CONFIG=str(self.extra))
        result = subprocess.run([str(CLUSTER_SH), *args], env=env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise AssertionError(f"cluster.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self) -> None:
        self.script("up")

    def close(self) -> None:
        self.script("down")

    def kill_broker(self, node: int) -> None:
        self.script("kill-broker", str(node))

    def start_broker(self, node: int) -> float:
        started = time.monotonic()
        self.script("start-broker", str(node))
        return time.monotonic() - started

    def redis_primaries(self) -> list[int]:
        return [int(port) for port in self.script("redis-primaries").split()]

    def kill_redis(self, port: int) -> None:
        self.script("redis-kill", str(port))

    def start_redis(self, port: int) -> None:
        self.script("redis-start", str(port))

    def redis_ok(self) -> bool:
        """Every slot served by a primary that answers."""
        try:
            client = redis.Redis(host="127.0.0.1", port=self._answering_node(), socket_timeout=2,
                                 decode_responses=True)
            info = client.execute_command("CLUSTER", "INFO")
        except (redis.RedisError, AssertionError):
            return False
        return "cluster_state:ok" in str(info)

    def _answering_node(self) -> int:
        for n in range(6):
            try:
                client = redis.Redis(host="127.0.0.1", port=self.redis_base + n, socket_timeout=1,
                                     socket_connect_timeout=0.5, retry=None)
                if client.ping():
                    return self.redis_base + n
            except redis.RedisError:
                continue
        raise AssertionError("no node of the Redis Cluster answers")
