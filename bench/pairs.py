"""Same-window pairs: a change measured against the commit before it on this shared, noisy machine.
The bench's drain, requests and mixed scenarios run on two commits in turn (base, head, head, base,
...), on the same broker and Redis within minutes of each other, so a change's effect is told apart
from the machine's drift. The measuring code is this checkout's; each commit's workers run from its
own git worktree in .cache/pairs/.

    python -m bench.pairs BASE [--head HEAD] [--rounds 3] [--only drain,requests,mixed] [--out FILE]

Prints each figure per round and the ratio of head's median to base's; writes every run as JSON."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.deploy import ROOT, Deployment, WorkerProcess
from bench.scenarios import (
    ONE_PROCESS,
    Run,
    Sizes,
    drain_backlog,
    in_own_city,
    mixed,
    requests_only,
)
from infra.local import worktree


@dataclass(frozen=True)
class Figure:
    """One number a scenario reports, and where it is in its result: a path of keys, or the last
    value of a time series when `path` ends in "last"."""

    name: str
    path: tuple[str, ...]

    def of(self, result: dict[str, Any]) -> float | None:
        value: Any = result
        for key in self.path:
            if key == "last":
                value = value[-1][-1] if isinstance(value, list) and value else None
            else:
                value = value.get(key) if isinstance(value, dict) else None
        return float(value) if isinstance(value, int | float) else None


def _on_a_city(run: Run, tag: str, measure: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """`measure(run, deployment, worker)` on the requests' city, removed afterwards: one worker of every
    role, which any earlier commit runs."""
    return in_own_city(run, tag, lambda dep, workers: measure(run, dep, workers[0]), shape=ONE_PROCESS)


def drain(run: Run) -> dict[str, Any]:
    """The requests' city, then a backlog of pings produced while its worker is stopped, drained."""

    def measure(run: Run, dep: Deployment, worker: WorkerProcess) -> dict[str, Any]:
        worker.stop()
        result, worker = drain_backlog(run, dep, run.sizes.assign_drivers, run.sizes.drain_pings)
        worker.stop()
        return result

    return _on_a_city(run, "d", measure)


def requests(run: Run) -> dict[str, Any]:
    result = _on_a_city(run, "r", lambda run, dep, worker: requests_only(run, dep, [worker], "s5"))
    result["worker_cpu_ms_per_request"] = round(1000 * result["worker_cpu_seconds"] / max(1, result["sent"]), 3)
    return result


def mixed_load(run: Run) -> dict[str, Any]:
    return _on_a_city(run, "m", mixed)


SCENARIOS: dict[str, tuple[Callable[[Run], dict[str, Any]], tuple[Figure, ...]]] = {
    "drain": (drain, (Figure("pings/s", ("rate_window",)),
                      Figure("CPU us/ping", ("cpu_us_per_ping",)))),
    "requests": (requests, (Figure("requests/s", ("rate_window",)),
                            Figure("CPU ms/request", ("worker_cpu_ms_per_request",)),
                            Figure("p50 ms", ("latency_ms", "p50")))),
    # The ping lag beside the answers' latency: a worker at capacity keeps one of them low by letting
    # the other grow, so either alone can look like a win.
    "mixed": (mixed_load, (Figure("p50 ms", ("latency_ms", "p50")),
                           Figure("p99 ms", ("latency_ms", "p99")),
                           Figure("pings behind at end", ("ping_lag", "last")),
                           Figure("exactly once", ("exactly_once",)))),
}


def commit_of(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def checkout_of(commit: str) -> Path:
    return worktree(commit, ROOT / ".cache" / "pairs" / commit[:12])


def summary(runs: list[dict[str, Any]], scenarios: list[str]) -> list[str]:
    lines = []
    for name in scenarios:
        for figure in SCENARIOS[name][1]:
            by_side: dict[str, list[float]] = {"base": [], "head": []}
            for entry in runs:
                if entry["scenario"] == name and entry.get("result"):
                    value = figure.of(entry["result"])
                    if value is not None:
                        by_side[entry["side"]].append(value)
            base, head = by_side["base"], by_side["head"]
            ratio = statistics.median(head) / statistics.median(base) if base and head and any(base) else None
            lines.append(f"{name:9} {figure.name:20} base {_list(base):32} head {_list(head):32} "
                         f"head/base {'-' if ratio is None else f'{ratio:.3f}'}")
    return lines


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the commit to compare against (any git revision)")
    parser.add_argument("--head", default=None, help="the commit measured (default: this checkout as it is)")
    parser.add_argument("--rounds", type=int, default=3, help="pairs per scenario (default 3)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--out", default=None, help="JSON file of every run (default .cache/pairs/<time>.json)")
    args = parser.parse_args()
    scenarios = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")

    base = commit_of(args.base)
    sides = {"base": checkout_of(base), "head": checkout_of(commit_of(args.head)) if args.head else ROOT}
    run_id = f"pairs{time.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}"
    out = Path(args.out) if args.out else ROOT / ".cache" / "pairs" / f"{run_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # The drain's backlog comes from the requests' city (loading the bench's own city takes minutes a
    # run), and lasts long enough for a rate over the middle of the drain.
    sizes = replace(Sizes(), drain_pings=60_000)
    runs: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        # base, head then head, base: neither side always runs second on a warmer (or busier) machine.
        order = ["base", "head"] if round_no % 2 == 0 else ["head", "base"]
        for name in scenarios:
            for side in order:
                run = Run(run_id=f"{run_id}r{round_no}{side[0]}", run_dir=ROOT / ".cache" / "bench" / run_id,
                          sizes=sizes, checkout=sides[side])
                run.run_dir.mkdir(parents=True, exist_ok=True)
                run.log(f"pairs: round {round_no + 1}/{args.rounds}, {name}, {side} ({sides[side]})")
                entry: dict[str, Any] = {"round": round_no, "scenario": name, "side": side, "started": time.time()}
                try:
                    entry["result"] = SCENARIOS[name][0](run)
                except Exception:  # one failed run must not lose the others
                    entry["error"] = traceback.format_exc()
                    run.log(f"pairs: {name} on {side} FAILED:\n{entry['error']}")
                runs.append(entry)
                out.write_text(json.dumps({"base": base, "head": args.head or "working tree", "runs": runs}, indent=1))
    print("\n".join(summary(runs, scenarios)))
    print(f"every run: {out}")


if __name__ == "__main__":
    main()
