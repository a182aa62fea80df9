"""`make bench`: runs every scenario on an isolated prefix of the shared broker and Redis, writes
JSON + PNG per scenario to bench/results/<date>-<cores>cores/, and prints one table.

    python -m bench [--quick] [--only pings,scale,city] [--out DIR]"""

from __future__ import annotations

import argparse
import os
import threading
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench import report
from bench.deploy import ROOT
from bench.scenarios import ALL, Run, Sizes


class MachineLoad(threading.Thread):
    """Whole-machine CPU use, sampled every second: how busy the shared box was while we measured."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        psutil.cpu_percent(None)
        while not self._halt.wait(1.0):
            self.samples.append((time.time(), psutil.cpu_percent(None)))

    def mean_between(self, start: float, end: float) -> float | None:
        values = [v for t, v in self.samples if start <= t <= end]
        return round(sum(values) / len(values), 1) if values else None

    def stop(self) -> None:
        self._halt.set()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the suite")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--out", default=None, help="results folder (default bench/results/<date>-<cores>cores)")
    args = parser.parse_args()

    started = datetime.now(UTC)
    cores = os.cpu_count() or 1
    default_out = ROOT / "bench" / "results" / f"{started:%Y-%m-%dT%H%M}Z-{cores}cores"
    out = Path(args.out).resolve() if args.out else default_out
    out.mkdir(parents=True, exist_ok=True)
    run_id = f"bench{started:%H%M%S}{uuid.uuid4().hex[:4]}"
    run = Run(run_id=run_id, run_dir=ROOT / ".cache" / "bench" / run_id, sizes=Sizes.quick() if args.quick else Sizes())
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.out = out

    load = MachineLoad()
    load.start()
    time.sleep(3)  # what the machine was doing before we added anything
    machine = {
        "cores": cores,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": os.getloadavg(),
        "cpu_percent_before_start": load.mean_between(0, time.time()),
        "started": started.isoformat(),
        "run_id": run_id,
        "quick": args.quick,
        "scenarios": {},
    }
    run.log(f"bench {run_id}: {cores} cores, load average {machine['loadavg_at_start']}, results in {out}")
    failed = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        t0 = time.time()
        try:
            ALL[name](run)
        except Exception:  # one scenario failing must not lose the others' results
            failed.append(name)
            run.log(f"scenario {name} FAILED:\n{traceback.format_exc()}")
        machine["scenarios"][name] = {
            "seconds": round(time.time() - t0, 1),
            "machine_cpu_percent_mean": load.mean_between(t0, time.time()),
        }
    load.stop()
    machine["loadavg_at_end"] = os.getloadavg()
    machine["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    machine["failed"] = failed
    for name, result in run.results.items():
        report.write_json(out, name, result)
        try:
            report.CHARTS[name](out, result)
        except Exception:  # a chart must not hide the figures
            run.log(f"chart {name} failed:\n{traceback.format_exc()}")
    text = report.table(run.results)
    machine["table"] = text.splitlines()
    report.write_json(out, "machine", machine)
    (out / "table.txt").write_text(text + "\n")
    # --out may name a folder outside the repository.
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print()
    print(
        f"geodispatch bench, {started:%Y-%m-%d %H:%M} UTC, {cores} cores, {machine['seconds']:.0f} s, "
        f"load average {machine['loadavg_at_start'][0]:.2f} at start; results in {shown}"
    )
    print(text)
    if failed:
        print(f"\nFAILED scenarios: {', '.join(failed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
