"""The clock-step fault: one worker of two runs under libfaketime (Debian's faketime, installed by
infra/debian-package.sh), whose wall clock the test steps forward and back while the worker holds
partitions. A time namespace cannot do it: it offsets the monotonic and boot clocks, not the wall clock."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tests.faults.load import Load
from tests.faults.scenarios import Outcome, _finish, _metric, _start_pair, fault_env, settle, timing, timing_figures
from tests.integration.harness import Deployment, WorkerProcess

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
FENCED = "geodispatch_fenced_writes_total"
STORES = ("index", "changelog")


@dataclass
class SteppedClock:
    """The offset of a worker's wall clock from the real one, read by libfaketime from `path` at
    every call (FAKETIME_NO_CACHE), so that a step takes effect at once. Only the wall clock moves
    (FAKETIME_DONT_FAKE_MONOTONIC): timeouts, backoffs and asyncio keep the real pace, as on a
    machine whose NTP daemon steps the clock."""

    path: Path

    def __post_init__(self) -> None:
        assert LIBFAKETIME.exists(), f"{LIBFAKETIME} is missing: run make faults, which installs Debian's faketime"
        self.step(0)

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(self.path),
                "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def step(self, offset_s: int) -> None:
        """Sets the clock `offset_s` seconds from the real one. Renamed into place: libfaketime never
        reads a half-written file."""
        written = self.path.with_suffix(".new")
        written.write_text(f"{offset_s:+d}\n")
        written.replace(self.path)


def fenced_writes(worker: WorkerProcess) -> dict[str, int]:
    """Writes the worker refused by their fence token so far, by store: the Redis index's refusals
    and the changelog entries its restores skipped."""
    return {store: int(_metric(worker, f'{FENCED}{{store="{store}"}}')) for store in STORES}


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for store, count in more.items():
        total[store] = total.get(store, 0) + count


def clock_step(dep: Deployment, clock: SteppedClock, duration_s: float, hold_s: float, cycles: int,
               skew_s: int = 30) -> Outcome:
    """Mixed load on worker `a` (clock under the test's hand) and `b`. In each cycle: `a`'s clock
    steps `skew_s` forward; `b` leaves (SIGTERM), so `a` takes every partition under its skewed clock
    and writes their drivers for `hold_s`; `a`'s clock steps back; `b` joins again and takes half the
    partitions back from `a`. The run ends with a cold restore: both workers stop and a new one (an
    empty data directory) restores every session from the changelog, which the checker then reads.
    Wall-clock tokens lose `b`'s writes to `a`'s for `skew_s` after each step."""
    fault_env(dep)
    workers = _start_pair(dep, lambda name: clock.env() if name == "a" else {})
    load = Load(dep.names, seed=31, bootstrap=dep.bootstrap)
    load.start()
    fenced: dict[str, int] = {}
    quiet_s = max(0.0, duration_s / cycles - hold_s)
    back = time.time()
    for _ in range(cycles):
        time.sleep(quiet_s / 2)
        clock.step(skew_s)
        _add(fenced, fenced_writes(workers["b"]))
        workers["b"].stop()
        time.sleep(hold_s)
        clock.step(0)
        workers["b"] = dep.start_worker("b")
        workers["b"].wait_ready(120)
        back = time.time()
        time.sleep(quiet_s / 2)
    load.stop()
    settle(dep, load, workers["a"])
    for worker in workers.values():
        _add(fenced, fenced_writes(worker))
        worker.stop()
    restored = dep.start_worker("restored")
    outcome = _finish(dep, load, {"restored": restored}, f"clock step (+{skew_s}s and back x{cycles}, "
                      f"{hold_s:.0f}s holding every partition, {duration_s:.0f}s of load, then a cold restore)",
                      {"clock steps": 2 * cycles}, back)
    _add(fenced, fenced_writes(restored))
    # The answers' own times are the skewed clock's for the answers `a` gave ahead.
    seen = timing(dep, load.answered_at)
    outcome.recovery_s = seen.recovered_after(back)
    outcome.extra.update({**timing_figures(seen), **{f"fenced writes ({store})": n for store, n in fenced.items()}})
    return outcome
