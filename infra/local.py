"""One isolated pipeline on given servers, for the tests and the benchmarks alike: its own topic prefix,
Redis key prefix and app id, real workers of a checkout as subprocesses, the command line, and the
removal of exactly what it created. tests/integration/harness.py and bench/deploy.py add their own
defaults and tools on top of it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import redis

from infra.cleanup import remove_deployment
from infra.clients import blocking_redis_client
from infra.redis_keys import RedisKeys
from infra.settings import Settings
from infra.topics import TopicNames

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_CLUSTER_NODES = os.environ.get("REDIS_CLUSTER_NODES") or None
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_run(count: int, bus_offset: int = 0) -> int:
    """The first of `count` consecutive free ports (with bus_offset, the `count` ports that far above
    them too: a Redis Cluster node also listens on its port + 10000). They are drawn below the kernel's
    ephemeral range, so that no client socket can take one between this check and the servers' binds."""
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(500):
        base = random.randrange(10000, ephemeral_start - bus_offset - count)
        ports = [base + i for i in range(count)] + [base + bus_offset + i for i in range(count) if bus_offset]
        if all(_port_free(port) for port in ports):
            return base
    raise AssertionError(f"no {count} consecutive free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class WorkerFailed(AssertionError):
    """A worker exited or did not become ready: in a test, the failure it reports (an AssertionError)."""


def worktree(commit: str, path: Path) -> Path:
    """The tree of `commit` at `path`, made once with `git worktree` (a shallow clone may lack the
    commit: `git fetch --unshallow`)."""
    if not (path / "streams").is_dir():
        git = subprocess.run(["git", "worktree", "add", "--force", "--detach", str(path), commit], cwd=ROOT,
                             capture_output=True, text=True)
        if git.returncode != 0:
            raise RuntimeError(f"cannot check out {commit} into {path}: {git.stderr.strip()}")
    return path


def _code_of(checkout: Path) -> dict[str, str]:
    """The environment that makes Python import the packages of `checkout` rather than this one's
    (installed in editable mode, found after PYTHONPATH)."""
    return {} if checkout == ROOT else {"PYTHONPATH": str(checkout)}


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    data_dir: Path
    started_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, Any]:
        """Status and body (JSON decoded when it is JSON) of a GET to the worker's HTTP API."""
        request = urllib.request.Request(self.url(path), headers=headers or {})
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
        status, body = self.get("/stats", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"/stats answered {status}: {body}")
        return body

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Until /stats says the worker acts on its partitions (with the sessions role: the index rebuilt
        for them); seconds since its start. A release's worker from before `ready` (the upgrade test's)
        says it with the index's epoch."""
        def ready() -> bool:
            stats = self.stats()
            return bool(stats.get("ready", stats.get("index", {}).get("epoch")))

        return self._wait_until(ready, timeout, "ready")

    def wait_answering(self, timeout: float = 30.0) -> float:
        """Until /health answers healthy (an API process has no index of its own to wait for)."""
        return self._wait_until(lambda: self.get("/health", timeout=5.0)[0] == 200, timeout, "answering")

    def _wait_until(self, check: Callable[[], bool], timeout: float, state: str) -> float:
        """Polls `check` (an HTTP call; failing to connect counts as not yet) until it holds; seconds
        since the process started. Fails at once when the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise WorkerFailed(f"worker {self.name} exited with {self.process.returncode}:\n{self.log_tail(60)}")
            try:
                if check():
                    return time.time() - self.started_at
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.1)
        raise WorkerFailed(f"worker {self.name} not {state} within {timeout}s:\n{self.log_tail(60)}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the worker commits what it finished), SIGKILL after `timeout`."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()


@dataclass
class LocalDeployment:
    """Topics `<prefix>...`, Redis keys `<redis_prefix>...`, consumer groups and stores of `<prefix><app id>`."""

    workdir: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}.")
    partitions: int = 2
    regions: tuple[str, ...] = ("4_-7", "0_0")
    app_id: str = "geodispatch"
    redis_prefix: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    # The shared broker and Redis unless a caller brings servers of its own (fault tests restart them).
    bootstrap: str = BOOTSTRAP
    redis_url: str = REDIS_URL
    # A Redis Cluster's nodes instead of redis_url (`make test-cluster`, the cluster fault scenarios).
    redis_cluster_nodes: str | None = REDIS_CLUSTER_NODES
    # What `python -m <module>` starts a worker with: the project's own `geodispatch worker` by default.
    worker_command: tuple[str, ...] = ("streams", "worker")
    # Whose code the workers and commands run: this checkout, or another one (see `worktree`).
    checkout: Path = ROOT
    # The settings every worker and command of this kind of deployment gets (GEODISPATCH_* variables).
    defaults: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        if not self.redis_prefix:
            self.redis_prefix = f"gd:{self.prefix}"

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.prefix)

    @property
    def redis_keys(self) -> RedisKeys:
        return RedisKeys(self.redis_prefix, self.partitions)

    def redis(self, decode_responses: bool = True) -> redis.Redis | redis.RedisCluster:
        """A client of the deployment's Redis: the Redis Cluster of REDIS_CLUSTER_NODES when it is set."""
        return blocking_redis_client(self._redis_settings(), decode_responses)

    def _redis_settings(self) -> Settings:
        return Settings(redis_url=self.redis_url, redis_cluster_nodes=self.redis_cluster_nodes)

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            REDIS_URL=self.redis_url,
            GEODISPATCH_TOPIC_PREFIX=self.prefix,
            GEODISPATCH_REDIS_PREFIX=self.redis_prefix,
            GEODISPATCH_APP_ID=self.app_id,
            GEODISPATCH_PARTITIONS=str(self.partitions),
            GEODISPATCH_REGIONS=",".join(self.regions),
            GEODISPATCH_LOG_FORMAT="json",
        )
        env.pop("REDIS_CLUSTER_NODES", None)
        if self.redis_cluster_nodes:
            env["REDIS_CLUSTER_NODES"] = self.redis_cluster_nodes
        env.update(self.defaults)
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def cli(self, *args: str, check: bool = True, timeout: float = 120, checkout: Path | None = None,
            **env: str) -> subprocess.CompletedProcess:
        """`geodispatch ARGS`, of the deployment's checkout or of another one (a release's worktree)."""
        checkout = checkout or self.checkout
        result = subprocess.run([PYTHON, "-m", "streams", *args], env=self.env(**_code_of(checkout), **env),
                                cwd=checkout, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise WorkerFailed(
                f"geodispatch {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def apply_topics(self) -> None:
        self.cli("topics", "apply")

    def data_dir(self, name: str) -> Path:
        """The data directory of the worker called `name`: a worker started again under its name finds
        its stores."""
        return self.workdir / f"{self.prefix}{self.app_id}-{name}"

    def start_worker(self, name: str = "w1", checkout: Path | None = None, roles: str | None = None,
                     port: int | None = None, **env: str) -> WorkerProcess:
        """A worker of the deployment's checkout, or of another one (a release's worktree), on its own port
        (`port`: the one a worker it replaces had); with `roles`, a worker of those roles only
        (`geodispatch worker --roles`)."""
        checkout = checkout or self.checkout
        port = port or free_port()
        data_dir = self.data_dir(name)
        log_path = data_dir.with_name(data_dir.name + ".log")
        log_file = open(log_path, "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [PYTHON, "-m", *self.worker_command, *(("--roles", roles) if roles else ())],
            env=self.env(GEODISPATCH_WEB_PORT=str(port), GEODISPATCH_DATA_DIR=str(data_dir), **_code_of(checkout),
                         **env),
            cwd=checkout,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        worker = WorkerProcess(name, process, port, log_path, data_dir)
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def cleanup(self) -> None:
        """Stops the workers and removes the deployment's topics and Redis keys from the servers."""
        self.stop_all()
        for problem in asyncio.run(remove_deployment(self.bootstrap, self._redis_settings(), self.prefix,
                                                     self.redis_prefix)):
            print(f"deployment {self.prefix}: {problem}", file=sys.stderr)
