"""`geodispatch simulate --compare greedy,batch`: the same seeded city (the same orders at the same
times, the same drivers and moves but for the trips each policy gives them) run once per matching
policy, each against a pipeline of its own: its own topics, Redis keys and worker, started with
GEODISPATCH_MATCHING set to the policy. What each policy did for the city, side by side."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra.local import LocalDeployment
from infra.percentiles import percentiles
from infra.settings import Settings
from producers import commandline
from producers.live import Report, run_simulation
from producers.simulator import SimulationConfig, distance_m
from schemas.models import NO_DRIVERS


@dataclass
class Outcome:
    """What one policy did for the city's orders."""

    policy: str
    orders: int  # requests sent
    served: int  # assigned to a driver who took the trip
    no_driver: int  # answered "No available drivers in area"
    cancelled: int  # assigned to a driver who had lost signal or was busy by then
    unanswered: int
    pickup_km_total: float  # driver's position when assigned -> restaurant, over the served orders
    pickup_km_p95: float | None
    eta_min_mean: float | None  # the answers' ETA, assignment to delivery
    eta_min_p95: float | None
    picked_up: int
    wait_min_p95: float | None  # request -> pickup, in city minutes (simulated time times the speed-up)
    latency_ms: dict[str, float | None]  # request sent -> answer read

    @property
    def no_driver_share(self) -> float:
        return self.no_driver / self.orders if self.orders else 0.0


def served_orders(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in snapshot["orders"] if o["outcome"] in ("assigned", "delivered")]


def pickup_distances_km(snapshot: dict[str, Any]) -> list[float]:
    """Each served order's driver, from where it was when assigned to the restaurant (great circle)."""
    return [distance_m(*o["driver_at_assignment"], *o["restaurant"]) / 1000 for o in served_orders(snapshot)
            if o["driver_at_assignment"]]


def waits_min(snapshot: dict[str, Any], speedup: float) -> list[float]:
    """Each picked-up order's wait from request to pickup, in city minutes."""
    return [(o["picked_up_at_s"] - o["requested_at_s"]) * speedup / 60 for o in served_orders(snapshot)
            if o["picked_up_at_s"] is not None]


def outcome(policy: str, snapshot: dict[str, Any], latencies_ms: list[float], speedup: float) -> Outcome:
    """The figures of one run from what it left (CitySimulation.snapshot and the answers' latencies)."""
    orders, served = snapshot["orders"], served_orders(snapshot)
    pickup_km = pickup_distances_km(snapshot)
    etas = [o["eta_min"] for o in served if o["eta_min"] is not None]
    waits = waits_min(snapshot, speedup)
    (pickup_p95,) = percentiles(pickup_km, 0.95)
    (eta_p95,) = percentiles(etas, 0.95)
    (wait_p95,) = percentiles(waits, 0.95)
    answered = ("assigned", "delivered", "failed", "cancelled")
    return Outcome(
        policy=policy,
        orders=sum(1 for o in orders if o["outcome"] != "malformed"),
        served=len(served),
        no_driver=sum(1 for o in orders if o["outcome"] == "failed" and o.get("error") == NO_DRIVERS),
        cancelled=sum(1 for o in orders if o["outcome"] == "cancelled"),
        unanswered=sum(1 for o in orders if o["outcome"] not in (*answered, "malformed")),
        pickup_km_total=sum(pickup_km),
        pickup_km_p95=pickup_p95,
        eta_min_mean=sum(etas) / len(etas) if etas else None,
        eta_min_p95=eta_p95,
        picked_up=len(waits),
        wait_min_p95=wait_p95,
        latency_ms=dict(zip(("p50", "p95", "p99"), percentiles(latencies_ms, 0.5, 0.95, 0.99), strict=True)),
    )


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


ROWS: list[tuple[str, Callable[[Outcome], str]]] = [
    ("orders", lambda o: f"{o.orders:,}"),
    ("served (a driver took the trip)", lambda o: f"{o.served:,} ({o.served / max(o.orders, 1):.1%})"),
    ('"No available drivers in area"', lambda o: f"{o.no_driver:,} ({o.no_driver_share:.1%})"),
    ("assigned a driver gone meanwhile", lambda o: f"{o.cancelled:,}"),
    ("unanswered", lambda o: f"{o.unanswered:,}"),
    ("pickup distance, total km", lambda o: _number(o.pickup_km_total)),
    ("pickup distance, p95 km", lambda o: _number(o.pickup_km_p95, 2)),
    ("ETA, mean / p95 min", lambda o: f"{_number(o.eta_min_mean)} / {_number(o.eta_min_p95, 0)}"),
    ("wait request → pickup, p95 min", lambda o: f"{_number(o.wait_min_p95)} ({o.picked_up:,} picked up)"),
    ("answer latency p50 / p95 / p99 ms",
     lambda o: " / ".join(_number(o.latency_ms[name], 0) for name in ("p50", "p95", "p99"))),
]


def table(outcomes: list[Outcome]) -> str:
    """The policies side by side, as a Markdown table."""
    lines = ["| | " + " | ".join(o.policy for o in outcomes) + " |",
             "|---|" + "---:|" * len(outcomes)]
    lines += [f"| {name} | " + " | ".join(cell(o) for o in outcomes) + " |" for name, cell in ROWS]
    return "\n".join(lines)


def run_policy(settings: Settings, config: SimulationConfig, policy: str, workdir: Path, workers: int = 1,
               **run: Any) -> Report:
    """One run of the city against a pipeline of its own, matching by `policy`, of `workers` workers
    (which share the request partitions, each matching its own share); removed afterwards."""
    deployment = LocalDeployment(
        workdir=workdir, partitions=settings.partitions, regions=(config.city.region,),
        bootstrap=settings.kafka_bootstrap_servers, redis_url=settings.redis_url.get_secret_value(),
        redis_cluster_nodes=settings.redis_cluster_nodes, extra_env={"GEODISPATCH_MATCHING": policy},
    )
    try:
        deployment.apply_topics()
        started = [deployment.start_worker(f"{policy}-{n}") for n in range(workers)]
        for worker in started:
            worker.wait_ready()
        return commandline.run(run_simulation(settings.model_copy(update={"topic_prefix": deployment.prefix}),
                                              config, stats_urls=tuple(w.url("/stats") for w in started), **run))
    finally:
        deployment.cleanup()


def compare(settings: Settings, config: SimulationConfig, policies: tuple[str, ...], results_dir: Path,
            progress: Callable[[str], None], workers: int = 1, **run: Any) -> list[Outcome]:
    """Runs the city once per policy, each run's results in results_dir/<policy>; writes the policies'
    figures side by side (comparison.json, comparison.md) and returns them."""
    outcomes = []
    for policy in policies:
        progress(f"{config.scenario.name}: running the city with {policy} matching")
        with tempfile.TemporaryDirectory(prefix=f"geodispatch-{policy}-") as workdir:
            report = run_policy(settings, config, policy, Path(workdir), workers, results_dir=results_dir / policy,
                                **run)
        progress(report.text())
        snapshot = json.loads((results_dir / policy / "city.json").read_text())
        latencies = json.loads((results_dir / policy / "latencies_ms.json").read_text())
        outcomes.append(outcome(policy, snapshot, latencies, config.speedup))
    (results_dir / "comparison.json").write_text(json.dumps(
        {"scenario": config.scenario.name, "description": config.scenario.description, "seed": config.seed,
         "drivers": config.drivers, "orders_per_s": config.orders_per_s, "speedup": config.speedup,
         "workers": workers,
         "outcomes": [asdict(o) for o in outcomes]}, indent=2))
    (results_dir / "comparison.md").write_text(table(outcomes) + "\n")
    return outcomes


def draw(results_dir: Path, outcomes: list[Outcome]) -> list[Path]:
    """maps.png, each policy's city side by side, and distributions.png, the pickup distances, the
    waits for pickup and the answer latencies of the policies on one axis each. Needs matplotlib."""
    from producers.plots import _matplotlib, draw_city

    plt = _matplotlib()
    comparison = json.loads((results_dir / "comparison.json").read_text())
    snapshots = {o.policy: json.loads((results_dir / o.policy / "city.json").read_text()) for o in outcomes}
    latencies = {o.policy: json.loads((results_dir / o.policy / "latencies_ms.json").read_text()) for o in outcomes}
    fig, axes = plt.subplots(1, len(outcomes), figsize=(8 * len(outcomes), 7.4), dpi=90, squeeze=False)
    for ax, o in zip(axes[0], outcomes, strict=True):
        draw_city(fig, ax, snapshots[o.policy])
        ax.set_title(f"{o.policy}: {o.served} served, {o.no_driver} without a driver, "
                     f"pickup {o.pickup_km_total:.1f} km in all", fontsize=11)
    fig.suptitle(f"{comparison['scenario']}: {comparison['description']} (seed {comparison['seed']})", fontsize=12)
    fig.tight_layout()
    maps = results_dir / "maps.png"
    fig.savefig(maps)
    plt.close(fig)

    speedup = comparison["speedup"]
    series: dict[str, Callable[[dict, list[float]], list[float]]] = {
        "pickup distance (km)": lambda snapshot, _: pickup_distances_km(snapshot),
        "wait request → pickup (city min)": lambda snapshot, _: waits_min(snapshot, speedup),
        "answer latency (ms)": lambda _, latencies: latencies,
    }
    fig, axes = plt.subplots(1, len(series), figsize=(15, 4.5), dpi=100)
    for ax, (label, values_of) in zip(axes, series.items(), strict=True):
        for o in outcomes:
            values = sorted(values_of(snapshots[o.policy], latencies[o.policy]))
            if values:
                ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post",
                        label=f"{o.policy} ({len(values)})")
        ax.set_xlabel(label)
        ax.set_ylabel("share of orders at or below")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(f"{comparison['scenario']}: distributions per policy", fontsize=12)
    fig.tight_layout()
    distributions = results_dir / "distributions.png"
    fig.savefig(distributions)
    plt.close(fig)
    return [maps, distributions]
