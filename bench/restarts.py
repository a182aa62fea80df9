"""Restarts in a loop until one leaves a request unanswered: a city loaded once, then the worker
stopped and started again, warm and cold (its data directory deleted, the tables restored by faust's
recovery alone) in turn, each time after an assignment request was produced while it was down. The
first restart that answers nothing within the bound stops the loop and leaves that worker running,
with its pid, port and log printed, for a look from outside (py-spy dump, /stats, the group's offsets).

    python -m bench.restarts [--drivers 100000] [--rounds 16] [--bound 60]

One in about fifteen cold restarts of a 100,000-driver city answered nothing on 2026-12-05 (issue
21's item 6): the request had been fetched and skipped by the stream, and nothing fetched it again.
A guard that read such records back was tried and withdrawn (docs/RELIABILITY.md, "A cold restart
that never answered"): this reproduction is how the next fix is to be judged."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
import uuid

from bench.scenarios import Run, Sizes, follow, index_settled, measure_restart, sessions_seen
from infra.local import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.restarts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", type=int, default=100_000, help="the city's size (default 100,000)")
    parser.add_argument("--rounds", type=int, default=16, help="restarts, warm and cold in turn (default 16)")
    parser.add_argument("--bound", type=float, default=60.0, help="seconds a restart may take to answer")
    args = parser.parse_args()

    run_id = f"restarts{time.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}"
    run = Run(run_id=run_id, run_dir=ROOT / ".cache" / "bench" / run_id, sizes=Sizes())
    run.run_dir.mkdir(parents=True, exist_ok=True)
    dep = run.deployment("r")
    dep.apply_topics()
    run.log(f"restarts: loading a city of {args.drivers} drivers")
    dep.tool("bench.load", "city", "--drivers", str(args.drivers))
    worker = dep.start_worker("w1")
    worker.wait_ready()
    follow([worker], sessions_seen, 2 * args.drivers, timeout=400, settle=index_settled)
    for n in range(args.rounds):
        cold = n % 2 == 1
        worker.stop()
        if cold:
            shutil.rmtree(dep.data_dir("w1"), ignore_errors=True)
        env = {"GEODISPATCH_BULK_RESTORE_MIN_RECORDS": "0"} if cold else {}
        kind = "cold, faust's recovery alone" if cold else "warm"
        try:
            marks, worker = asyncio.run(asyncio.wait_for(
                measure_restart(dep, lambda e=env: dep.start_worker("w1", **e), f"{run_id}-{n}"), args.bound
            ))
        except TimeoutError:
            hung = dep.workers[-1]
            run.log(f"restarts: {n + 1} ({kind}) answered nothing within {args.bound:.0f} s; left running: "
                    f"pid {hung.pid}, port {hung.port}, log {hung.log_path}, consumer group {dep.prefix}{dep.app_id}")
            return
        run.log(f"restarts: {n + 1} ({kind}): {marks}")
    run.log(f"restarts: all {args.rounds} answered")
    dep.cleanup()


if __name__ == "__main__":
    main()
