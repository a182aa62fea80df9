"""One machine's deployment (`geodispatch run`, `make run`, `make demo`): the worker processes of a
shape, started together and stopped together. A process per role is the shape recommended for one
machine: requests are decided on a process of their own and never wait behind pings, and HTTP load
never shares an event loop with either (docs/DEPLOYMENT.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)
# How long a process has to finish its work in hand after SIGTERM before it is killed.
STOP_TIMEOUT_S = 30.0
# The sessions process's nice value beside the others (Settings.niceness): when pings and requests
# want more CPU than the machine has, as while a fleet's first pings after a start arrive, requests
# get it first and pings wait (bench/README.md, the mixed scenario).
SESSIONS_NICENESS = 10


@dataclass(frozen=True)
class Process:
    roles: str
    port: int
    niceness: int = 0


def niceness(roles: str) -> int:
    """A process's nice value in a shape: the sessions role alone gives way to the others."""
    return SESSIONS_NICENESS if roles == "sessions" else 0


def shape(name: str, api_port: int) -> tuple[Process, ...]:
    """The processes of a shape. The sessions API keeps its port (the contract's, 6066 by default),
    and the stream processors, which serve /health, /stats and /metrics only, take the next ones."""
    if name == "one":
        return (Process("sessions,assignments,api", api_port),)
    return (Process("api", api_port), Process("sessions", api_port + 1, niceness("sessions")),
            Process("assignments", api_port + 2))


def run(processes: tuple[Process, ...]) -> int:
    """Starts every process, and stops them all on SIGINT or SIGTERM, or when one of them exits;
    returns the exit code of the first to exit (0 when stopped by a signal)."""
    started = [
        (process, subprocess.Popen([sys.executable, "-m", "streams", "worker", "--roles", process.roles,
                                    "--web-port", str(process.port)],
                                   env={**os.environ, "GEODISPATCH_NICENESS": str(process.niceness)}))
        for process in processes
    ]
    for process, popen in started:
        log.info("process_started", roles=process.roles, port=process.port, pid=popen.pid, niceness=process.niceness)
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        exited = [(process, popen) for process, popen in started if popen.poll() is not None]
        if exited:
            process, popen = exited[0]
            code = popen.returncode or 1
            log.error("process_exited", roles=process.roles, pid=popen.pid, code=popen.returncode,
                      stopping="the others")
            break
        time.sleep(0.2)
    for _, popen in started:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process, popen in started:
        try:
            popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("process_killed", roles=process.roles, pid=popen.pid, after_s=STOP_TIMEOUT_S)
            popen.kill()
            popen.wait()
    return code
