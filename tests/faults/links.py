"""Link faults for the fault suite: a Toxiproxy server of a test's own, and per worker one proxy in
front of Kafka and one in front of Redis, so that a test cuts, slows or resets each of a worker's
links on its own while the others work."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.faults.servers import Broker, RedisServer
from tests.integration.harness import ROOT, free_port

# Built by infra/toxiproxy.sh (`make test` and `make faults` run it first).
SERVER = Path(os.environ.get("GEODISPATCH_CACHE", ROOT / ".cache")) / "bin" / "toxiproxy-server"
KAFKA, REDIS = "kafka", "redis"
LINKS = (KAFKA, REDIS)


class ToxiproxyError(AssertionError):
    """The Toxiproxy API refused a call: in a test, the failure it reports."""


@dataclass(frozen=True)
class Toxic:
    """One toxic as Toxiproxy's API takes it. `stream`: downstream (server to worker) or upstream."""

    type: str
    attributes: dict[str, int]
    stream: str = "downstream"

    @property
    def name(self) -> str:
        return f"{self.type}_{self.stream}"

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "stream": self.stream, "toxicity": 1.0,
                "attributes": self.attributes}


def latency(ms: int, jitter_ms: int = 0, stream: str = "downstream") -> Toxic:
    """Each chunk of data held ms ± jitter_ms before it goes on (in order: a chunk never overtakes)."""
    return Toxic("latency", {"latency": ms, "jitter": jitter_ms}, stream)


def bandwidth(kb_per_s: int, stream: str = "downstream") -> Toxic:
    return Toxic("bandwidth", {"rate": kb_per_s}, stream)


def reset_peer(after_ms: int = 0, stream: str = "upstream") -> Toxic:
    """Every connection that carries data resets (TCP RST, unsent data dropped) after_ms later: the
    worker's reconnections meet it too until it is removed."""
    return Toxic("reset_peer", {"timeout": after_ms}, stream)


def timeout(ms: int = 0, stream: str = "upstream") -> Toxic:
    """Data stops; the connection closes ms later (0: never), the half-dead link a cut cable leaves."""
    return Toxic("timeout", {"timeout": ms}, stream)


class Toxiproxy:
    """A toxiproxy-server of a test's own on a free port of 127.0.0.1, driven over its HTTP API."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log_path = tmp / "toxiproxy.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if not SERVER.exists():
            raise ToxiproxyError(f"{SERVER} is missing: run infra/toxiproxy.sh ensure (make test does)")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(SERVER), "-host", "127.0.0.1", "-port", str(self.port)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.call("GET", "/version")
                return
            except (OSError, ToxiproxyError):
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        self.close()
        raise ToxiproxyError(f"toxiproxy-server on {self.port} did not answer:\n{self.log_path.read_text()}")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw, kind = response.read(), response.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from exc
        # /version answers plain text, the rest JSON (a DELETE nothing at all).
        return json.loads(raw) if kind == "application/json" and raw.strip() else raw.decode()

    def create(self, proxy: str, listen: str, upstream: str) -> None:
        self.call("POST", "/proxies", {"name": proxy, "listen": listen, "upstream": upstream, "enabled": True})

    def enable(self, proxy: str, enabled: bool) -> None:
        """Disabled, a proxy closes its connections and stops listening: new ones are refused."""
        self.call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    def add(self, proxy: str, toxic: Toxic) -> None:
        self.call("POST", f"/proxies/{proxy}/toxics", toxic.body())

    def remove(self, proxy: str, toxic: Toxic) -> None:
        self.call("DELETE", f"/proxies/{proxy}/toxics/{toxic.name}")

    def reset(self) -> None:
        """Every proxy enabled again and every toxic removed."""
        self.call("POST", "/reset")


def listener_name(worker: str) -> str:
    """The broker listener of a worker's Kafka proxy: W_A for worker a."""
    return f"W_{worker.upper()}"


def proxy_name(worker: str, link: str) -> str:
    return f"{worker}-{link}"


@dataclass
class Links:
    """Per worker, a proxy in front of Kafka (through a broker listener of its own, see Broker) and
    one in front of Redis. Ports are drawn first, since the broker advertises the Kafka ones."""

    toxiproxy: Toxiproxy
    workers: tuple[str, ...]
    ports: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ports = {(w, link): free_port() for w in self.workers for link in LINKS}

    def advertised(self) -> dict[str, int]:
        """The broker's worker listeners (Broker's worker_listeners): each advertises its proxy."""
        return {listener_name(w): self.ports[(w, KAFKA)] for w in self.workers}

    def connect(self, broker: Broker, redis: RedisServer) -> None:
        for w in self.workers:
            self.toxiproxy.create(proxy_name(w, KAFKA), self._address(w, KAFKA), broker.listener(listener_name(w)))
            self.toxiproxy.create(proxy_name(w, REDIS), self._address(w, REDIS), f"127.0.0.1:{redis.port}")

    def _address(self, worker: str, link: str) -> str:
        return f"127.0.0.1:{self.ports[(worker, link)]}"

    def env(self, worker: str) -> dict[str, str]:
        """A worker's settings that put both its links behind its proxies."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self._address(worker, KAFKA),
                "REDIS_URL": f"redis://{self._address(worker, REDIS)}/0"}

    def every(self, workers: Iterable[str] | None = None) -> list[tuple[str, str]]:
        return [(w, link) for w in (self.workers if workers is None else workers) for link in LINKS]

    @contextmanager
    def cut(self, *links: tuple[str, str]) -> Iterator[None]:
        """The links (worker, kafka|redis) down: connections closed, new ones refused; healed on exit."""
        for worker, link in links:
            self.toxiproxy.enable(proxy_name(worker, link), False)
        try:
            yield
        finally:
            for worker, link in links:
                self.toxiproxy.enable(proxy_name(worker, link), True)

    @contextmanager
    def poisoned(self, links: Iterable[tuple[str, str]], *toxics: Toxic) -> Iterator[None]:
        """The toxics on each link until exit."""
        applied: list[tuple[str, Toxic]] = []
        try:
            for worker, link in links:
                for toxic in toxics:
                    self.toxiproxy.add(proxy_name(worker, link), toxic)
                    applied.append((proxy_name(worker, link), toxic))
            yield
        finally:
            for proxy, toxic in applied:
                self.toxiproxy.remove(proxy, toxic)

    def bypassing(self, pid: int, broker: Broker, redis: RedisServer) -> list[str]:
        """The TCP connections of process `pid` (and its children) that reach the broker or Redis
        other than through its proxies: a cut link is only cut if there are none."""
        direct = {broker.port, *broker.listener_ports.values(), redis.port}
        process = psutil.Process(pid)
        found = []
        for p in (process, *process.children(recursive=True)):
            for conn in p.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port in direct and conn.status == psutil.CONN_ESTABLISHED:
                    found.append(f"pid {p.pid} {conn.laddr.port} -> {conn.raddr.port}")
        return found
