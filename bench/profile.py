"""Where a worker's time per ping goes: py-spy samples the worker (from outside, no code change)
while it drains a backlog of pings, and the samples are folded into self time per library and
inclusive time per function of ours. Part of `make bench`; alone: `python -m bench --only profile`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.deploy import cpu_seconds, pings_seen

# Self time is charged to the first of these found in the sampled frame's file path.
LIBRARIES = [
    ("faust/", "faust"),
    ("mode/", "mode (faust's service runtime)"),
    ("aiokafka/", "aiokafka"),
    ("redis/", "redis-py"),
    ("asyncio/", "asyncio event loop"),
    ("selectors", "asyncio event loop"),
    ("uvloop", "asyncio event loop"),
    ("pydantic", "pydantic"),
    ("structlog/", "structlog"),
    ("prometheus_client/", "prometheus_client"),
    ("rocksdict", "rocksdb store"),
    ("dataclasses", "dataclasses"),
    ("h3/", "h3"),
    ("orjson", "orjson"),
    ("streams/", "geodispatch (streams/)"),
    ("schemas/", "geodispatch (schemas/)"),
    ("contextlib", "contextlib"),
    ("functools", "functools"),
    ("threading", "threads"),
]
OURS = ("streams/", "schemas/")


def _library(frame: str) -> str:
    for needle, name in LIBRARIES:
        if needle in frame:
            return name
    return "other"


def fold(raw: Path) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks into self time per library and per function, and inclusive
    time of our own functions and of the big framework steps."""
    self_lib: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)", ")", f) for f in stack.split(";")]
        self_lib[_library(frames[-1])] += n
        self_fn[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    share = lambda n: round(n / total, 4) if total else 0.0  # noqa: E731
    steps = {
        f: share(n)
        for f, n in incl.most_common()
        if any(o in f for o in OURS)
        or any(
            k in f
            for k in (
                "Stream._c_aiter",
                "Consumer._drain_messages",
                "Producer.send",
                "ProducerBuffer",
                "Sender._sender_routine",
                "Pipeline.execute",
                "Store._set",
                "Fetcher._fetcher",
                "Conductor",
                "_SelectorSocketTransport.write",
                "Table",
                "Recovery",
            )
        )
    }
    return {
        "samples": total,
        "self_by_library": {k: share(v) for k, v in self_lib.most_common()},
        "self_top_functions": {k: share(v) for k, v in self_fn.most_common(30)},
        "inclusive_steps": dict(list(steps.items())[:45]),
    }


def spy_command(pid: int, seconds: float, raw: Path) -> list[str]:
    """py-spy sampling a running process for `seconds` at 250 Hz, raw stacks into `raw`."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [binary, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250", "-f", "raw", "-o", str(raw),
            "--nonblocking"]


def spy(pid: int, seconds: float, raw: Path) -> subprocess.Popen:
    """py-spy sampling a running process, in the background."""
    return subprocess.Popen(spy_command(pid, seconds, raw), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile(run) -> None:
    """Drains a backlog under py-spy; results in `run.results['profile']`."""
    s = run.sizes
    dep = run.deployment("prof")
    dep.apply_topics()
    try:
        drivers = min(20_000, s.city_drivers)
        pings = s.profile_pings
        # Pings only (drivers unknown until their first ping): the ping path alone is profiled.
        dep.tool("bench.load", "pings", "--drivers", str(drivers), "--count", str(pings))
        worker = dep.start_worker("w1")
        worker.wait_ready()
        raw = dep.workdir / "profile.raw.txt"
        seen0, cpu0 = pings_seen(worker.stats()), cpu_seconds(worker.pid)
        t0 = time.time()
        result = subprocess.run(
            spy_command(worker.pid, s.profile_seconds, raw),
            capture_output=True,
            text=True,
            timeout=s.profile_seconds + 60,
        )
        elapsed = time.time() - t0
        seen = pings_seen(worker.stats()) - seen0
        cpu = cpu_seconds(worker.pid) - cpu0
        if result.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed ({result.returncode}): {result.stderr[-1500:]}")
        folded = fold(raw)
        us_per_ping = 1e6 * cpu / max(1, seen)
        folded.update(
            pings_during=seen,
            seconds=round(elapsed, 2),
            rate=round(seen / elapsed, 1),
            worker_cpu_share=round(cpu / elapsed, 3),
            cpu_us_per_ping=round(us_per_ping, 1),
            us_per_ping_by_library={k: round(v * us_per_ping, 1) for k, v in folded["self_by_library"].items()},
            py_spy=result.stderr.strip().splitlines()[-2:] if result.stderr else [],
        )
        run.results["profile"] = folded
        if run.out is not None:
            shutil.copy(raw, run.out / "profile.raw.txt")
        run.log(
            f"profile: {seen / elapsed:.0f} pings/s under py-spy, {us_per_ping:.0f} us CPU per ping; "
            f"self time by library: {dict(list(folded['self_by_library'].items())[:6])}"
        )
    finally:
        dep.cleanup()
