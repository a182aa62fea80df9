"""The full-disk fault: a worker's data directory (its RocksDB table stores) on a small filesystem of its
own that a test fills while the worker holds partitions, keeps full, and then frees."""

from __future__ import annotations

import errno
import json
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tests.faults.load import Load
from tests.faults.scenarios import Outcome, _finish, _start_pair, fault_env
from tests.integration.harness import Deployment, WorkerProcess

# What RocksDB (and so a store write) says when the filesystem refuses a write.
NO_SPACE = "No space left on device"


class SmallDisk:
    """A tmpfs of `size_mib` mounted at `path` (root only). A tmpfs refuses a write past its size with
    ENOSPC, as a full disk does: that error is what the stores meet, not how the space ran out."""

    def __init__(self, path: Path, size_mib: int = 32) -> None:
        self.path = path
        self.size_mib = size_mib
        self.filler = path / "filler"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m,mode=0755", "tmpfs", str(self.path)],
                       check=True, capture_output=True, timeout=30)

    def fill(self) -> int:
        """Appends to the filler until the filesystem refuses more (in 1 MiB, then 4 KiB writes, so that
        not even a small write fits afterwards); returns the bytes it added. Called again, it takes back
        whatever was freed meanwhile."""
        added = 0
        with open(self.filler, "ab", buffering=0) as file:
            for size in (1 << 20, 4096):
                block = bytes(size)
                while True:
                    try:
                        added += file.write(block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return added

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        """Unmounts; lazily when a process still holds files there (the worker under test, if alive)."""
        self.free()
        if subprocess.run(["umount", str(self.path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], check=True, capture_output=True, timeout=30)


# An orchestrator's first wait before it starts a crashed worker again; it doubles with each crash
# (Kubernetes' CrashLoopBackOff starts at 10 s).
RESTART_BACKOFF_S = 10.0


@dataclass
class Orchestrator:
    """Keeps one worker as an orchestrator would: started again on its directory (and port) once it has
    been down for the back-off, at once when `poll` is told to. Notes from outside what the worker did
    after the disk filled: its exits, and when it first said it was not ready."""

    dep: Deployment
    worker: WorkerProcess
    full_at: float
    exits: list[tuple[float, int | None]] = field(default_factory=list)  # (s after the fill, exit code)
    restarts: int = 0
    not_ready_after_s: float | None = None
    backoff_s: float = RESTART_BACKOFF_S
    down_since: float | None = None

    def poll(self, restart_now: bool = False) -> None:
        now = time.time()
        if self.worker.alive():
            if self.restarts == 0 and self.not_ready_after_s is None and not _ready(self.worker):
                self.not_ready_after_s = now - self.full_at
            return
        if self.down_since is None:
            self.down_since = now
            self.exits.append((round(now - self.full_at, 1), self.worker.process.returncode))
        if restart_now or now - self.down_since >= self.backoff_s:
            self.worker = self.dep.start_worker(self.worker.name, port=self.worker.port)
            self.restarts += 1
            self.backoff_s *= 2
            self.down_since = None


def _ready(worker: WorkerProcess) -> bool:
    try:
        return worker.get("/health/ready", timeout=2.0)[0] == 200
    except OSError:  # no answer at all: not ready either
        return False


def log_events(worker: WorkerProcess, since: float) -> dict[str, int]:
    """What the worker said about the fault: how many of its log lines name the full disk (a crash's
    traceback too, which is not JSON), and how many times each event at WARNING or above appears in its
    JSON log after `since` (epoch s)."""
    counts: dict[str, int] = {}
    for line in worker.log().splitlines():
        if NO_SPACE in line:
            counts[NO_SPACE] = counts.get(NO_SPACE, 0) + 1
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or _epoch_s(entry.get("timestamp")) < since:
            continue
        if str(entry.get("level", "")).lower() in ("warning", "error", "critical"):
            event = str(entry.get("event", ""))[:60]
            counts[event] = counts.get(event, 0) + 1
    return counts


def _epoch_s(stamp: object) -> float:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def full_disk(dep: Deployment, disk: SmallDisk, duration_s: float, full_s: float) -> Outcome:
    """Mixed load on two workers, `a` with its data directory on `disk` (mounted by the caller). A third
    of the way in, the disk is filled and kept full for `full_s`, then freed. Worker `a` is kept as an
    orchestrator would: started again after a back-off when it exits while the disk is full, at once
    after it is freed; a worker that stays up is left as it is, to show whether it mends by itself."""
    fault_env(dep)
    workers = _start_pair(dep)
    load = Load(dep.names, seed=37, bootstrap=dep.bootstrap)
    load.start()
    started = time.monotonic()
    time.sleep(duration_s / 3)
    filled = disk.fill()
    keeper = Orchestrator(dep, workers["a"], full_at=time.time())
    while time.time() - keeper.full_at < full_s:
        disk.fill()  # what the stores delete (a failed flush's files) is taken back: the disk stays full
        keeper.poll()
        time.sleep(0.5)
    restarts_while_full = keeper.restarts
    disk.free()
    freed_at = time.time()
    while time.monotonic() - started < duration_s:
        keeper.poll(restart_now=True)
        time.sleep(0.5)
    workers["a"] = keeper.worker
    events = log_events(keeper.worker, keeper.full_at)
    first_exit = keeper.exits[0][0] if keeper.exits else None
    extra: dict[str, object] = {
        "disk (MiB)": disk.size_mib,
        "filled with (MiB)": round(filled / 2**20, 1),
        "kept full (s)": round(full_s),
        "worker on it exited after (s)": _round(first_exit),
        "its exit codes": " ".join(str(code) for _, code in keeper.exits),
        "it said not ready after (s)": _round(keeper.not_ready_after_s),
        "restarted while full (back-off)": restarts_while_full,
        "workers restarted by the test": keeper.restarts,
        "its log lines naming the full disk": events.pop(NO_SPACE, 0),
    }
    extra.update({f"  its {event}": count for event, count in sorted(events.items())})
    name = f"full disk ({disk.size_mib} MiB tmpfs full for {full_s:.0f}s, {duration_s:.0f}s of load)"
    return _finish(dep, load, workers, name, extra, freed_at)


def _round(value: float | None) -> object:
    return round(value, 1) if value is not None else "never"
