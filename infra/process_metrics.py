"""What every process of ours exposes on its own /metrics besides its domain metrics: the process's
CPU, memory and file descriptors, the interpreter's collections, and which build it runs.

prometheus_client registers its process, platform and GC collectors on its global registry only; our
metrics live on injected registries (a worker's `streams.metrics.Metrics`, the gateway's
`consumers.gateway.metrics.GatewayMetrics`), so each adds them to its own here."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, GCCollector, PlatformCollector, ProcessCollector

# Where a source checkout keeps its git metadata: the commit label of a process run from one.
CHECKOUT = Path(__file__).resolve().parents[1]
BUILD_INFO = "geodispatch_build_info"


def package_version() -> str:
    try:
        return metadata.version("geodispatch")
    except metadata.PackageNotFoundError:
        return "unknown"


def source_commit(checkout: Path = CHECKOUT) -> str:
    """The commit a source checkout is at, read from its .git files (no git binary, no subprocess);
    "" for an installed wheel or an image without them."""
    git = checkout / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:40]
        ref = head.removeprefix("ref: ")
        if (git / ref).is_file():
            return (git / ref).read_text().strip()[:40]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0][:40]
    except OSError:
        pass
    return ""


def register_process_metrics(registry: CollectorRegistry) -> Gauge:
    """Adds `process_*` (CPU seconds, resident memory, open file descriptors, start time: Linux's /proc,
    nothing elsewhere), `python_info`, `python_gc_*` and `geodispatch_build_info{version, commit,
    python}` (always 1) to `registry`; returns the build-info gauge."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    build = Gauge(BUILD_INFO, "The build this process runs: always 1, the labels say which.",
                  ["version", "commit", "python"], registry=registry)
    build.labels(package_version(), source_commit(), platform.python_version()).set(1)
    return build
