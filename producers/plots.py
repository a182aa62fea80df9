"""The pictures of a simulated run: the city's H3 cells coloured by available drivers with the assignments
drawn, and the request-to-answer latency distribution. Reads what producers.live wrote; needs matplotlib."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import h3

# Resolution 8 cells (about 0.7 km²) read well at city scale; the pipeline indexes at 9, seven per 8-cell.
MAP_RESOLUTION = 8
CELL_EDGE_KM = 0.53


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def draw_all(results_dir: Path) -> list[Path]:
    snapshot = json.loads((results_dir / "city.json").read_text())
    latencies = json.loads((results_dir / "latencies_ms.json").read_text())
    summary = json.loads((results_dir / "summary.json").read_text())
    drawn = [draw_map(snapshot, results_dir / "map.png"), draw_latency(latencies, summary, results_dir / "latency.png")]
    if (results_dir / SUPPLY_DEMAND_FILE).exists():  # written by consumers.supply_demand.write_supply_demand
        feed = json.loads((results_dir / SUPPLY_DEMAND_FILE).read_text())
        drawn.append(draw_supply_demand(feed, results_dir / "supply_demand.png", snapshot))
    return drawn


def available_by_cell(drivers: list[dict], resolution: int = MAP_RESOLUTION) -> Counter:
    return Counter(h3.latlng_to_cell(d["lat"], d["lng"], resolution) for d in drivers if d["state"] == "available")


def draw_map(snapshot: dict, path: Path) -> Path:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(9, 9), dpi=110)
    draw_city(fig, ax, snapshot)
    ax.set_title(f"{snapshot['city']['name']}: drivers available per H3 cell at the end of the run, "
                 "and every assignment")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_city(fig, ax, snapshot: dict) -> None:
    """The city on `ax`: its cells coloured by available drivers, the drivers, every assignment
    (driver -> restaurant -> customer) and the orders that found no driver."""
    from matplotlib.collections import PolyCollection

    city, drivers, orders = snapshot["city"], snapshot["drivers"], snapshot["orders"]
    centre = h3.latlng_to_cell(city["lat"], city["lng"], MAP_RESOLUTION)
    rings = math.ceil(city["radius_km"] * 1.25 / (CELL_EDGE_KM * 1.5))
    cells = h3.grid_disk(centre, rings)
    counts = available_by_cell(drivers)
    polygons = [[(lng, lat) for lat, lng in h3.cell_to_boundary(cell)] for cell in cells]
    values = [counts.get(cell, 0) for cell in cells]

    shapes = PolyCollection(polygons, array=values, cmap="YlGn", edgecolors="#bbbbbb", linewidths=0.3)
    shapes.set_clim(0, max(3, max(values, default=0)))
    ax.add_collection(shapes)
    fig.colorbar(shapes, ax=ax, shrink=0.7, label=f"available drivers per H3 cell (resolution {MAP_RESOLUTION})")

    drawn = 0
    for order in orders:
        origin = order.get("driver_at_assignment")
        if order["outcome"] not in ("assigned", "delivered") or not origin:
            continue
        restaurant, customer = order["restaurant"], order["customer"]
        ax.plot([origin[1], restaurant[1]], [origin[0], restaurant[0]], color="#1f77b4", linewidth=1.0, alpha=0.8)
        ax.plot([restaurant[1], customer[1]], [restaurant[0], customer[0]], color="#d62728", linewidth=1.0,
                alpha=0.8, linestyle="--")
        ax.scatter([restaurant[1]], [restaurant[0]], marker="s", s=14, color="#d62728", zorder=3)
        ax.scatter([customer[1]], [customer[0]], marker="^", s=14, color="#9467bd", zorder=3)
        drawn += 1
    failed = [o for o in orders if o["outcome"] == "failed"]
    if failed:
        ax.scatter([o["restaurant"][1] for o in failed], [o["restaurant"][0] for o in failed], marker="x", s=24,
                   color="black", zorder=3, label=f"no driver found ({len(failed)})")
    by_state = {"available": ("#2ca02c", "available"), "on_trip": ("#ff7f0e", "on a trip"),
                "silent": ("#7f7f7f", "no signal")}
    for state, (colour, label) in by_state.items():
        points = [d for d in drivers if d["state"] == state]
        if points:
            ax.scatter([d["lng"] for d in points], [d["lat"] for d in points], s=9, color=colour, zorder=4,
                       label=f"driver {label} ({len(points)})", edgecolors="white", linewidths=0.3)
    ax.plot([], [], color="#1f77b4", label=f"driver → restaurant ({drawn} assignments)")
    ax.plot([], [], color="#d62728", linestyle="--", label="restaurant → customer")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.autoscale_view()
    ax.set_aspect(1 / math.cos(math.radians(city["lat"])))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")


def draw_latency(latencies_ms: list[float], summary: dict, path: Path) -> Path:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    if latencies_ms:
        top = sorted(latencies_ms)[min(len(latencies_ms) - 1, math.ceil(0.995 * len(latencies_ms)) - 1)]
        bins = [top * i / 60 for i in range(61)] if top > 0 else 10
        ax.hist([min(v, top) for v in latencies_ms], bins=bins, color="#1f77b4", alpha=0.85)
        for name, colour in (("p50", "#2ca02c"), ("p95", "#ff7f0e"), ("p99", "#d62728")):
            value = summary["latency_ms"].get(name)
            if value is not None:
                ax.axvline(value, color=colour, linestyle="--", label=f"{name} {value:.0f} ms")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no answers were received", ha="center", va="center", transform=ax.transAxes)
    worker = summary.get("worker") or {}
    worker_text = ""
    if worker.get("latency_ms", {}).get("p50") is not None:
        w = worker["latency_ms"]
        worker_text = f"; worker-side p50/p95/p99 {w['p50']:.0f}/{w['p95']:.0f}/{w['p99']:.0f} ms"
    ax.set_title(f"Assignment latency, request sent → answer read ({len(latencies_ms)} orders){worker_text}",
                 fontsize=10)
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("orders")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# -- the supply/demand layer ---------------------------------------------------------------------------

SUPPLY_DEMAND_FILE = "supply_demand.json"


def draw_supply_demand(feed: dict, path: Path, snapshot: dict | None = None) -> Path:
    """The feed of dispatch.supply_demand as the run left it (consumers.supply_demand.write_supply_demand's
    document): on the left its cells coloured by available drivers, on the right by the requests of the
    window, outlined in red where some were refused (no driver in the area), with the refusals written in.
    With the run's snapshot, its drivers and restaurants are drawn over both for orientation."""
    from matplotlib.collections import PolyCollection

    plt = _matplotlib()
    cells = feed.get("cells", [])
    fig, (supply_ax, demand_ax) = plt.subplots(1, 2, figsize=(15, 7.5), dpi=110)
    polygons = [[(lng, lat) for lat, lng in h3.cell_to_boundary(c["h3"])] for c in cells]
    panels = ((supply_ax, "available_drivers", "YlGn", "available drivers"),
              (demand_ax, "requests", "Blues", f"requests in the last {feed.get('window_s')} s"))
    for ax, field, cmap, label in panels:
        values = [c[field] for c in cells]
        shapes = PolyCollection(polygons, array=values, cmap=cmap, edgecolors="#999999", linewidths=0.4)
        shapes.set_clim(0, max(3, max(values, default=0)))
        ax.add_collection(shapes)
        fig.colorbar(shapes, ax=ax, shrink=0.7, label=f"{label} per H3 cell (resolution {feed.get('resolution')})")
    refused = [(polygon, c) for polygon, c in zip(polygons, cells, strict=True) if c["refused"]]
    if refused:
        demand_ax.add_collection(PolyCollection([polygon for polygon, _ in refused], facecolors="none",
                                                edgecolors="#d62728", linewidths=1.6))
        for _, c in refused:
            lat, lng = h3.cell_to_latlng(c["h3"])
            demand_ax.annotate(f"{c['refused']}", (lng, lat), ha="center", va="center", fontsize=8, color="#d62728",
                               fontweight="bold", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                                        "alpha": 0.8})
        demand_ax.plot([], [], color="#d62728", linewidth=1.6, label="refused: no driver in the area (count)")
    if snapshot is not None:
        available = [d for d in snapshot.get("drivers", []) if d.get("state") == "available"]
        supply_ax.scatter([d["lng"] for d in available], [d["lat"] for d in available], s=6, color="#2ca02c",
                          edgecolors="white", linewidths=0.3, zorder=3, label=f"driver available ({len(available)})")
        orders = snapshot.get("orders", [])
        demand_ax.scatter([o["restaurant"][1] for o in orders], [o["restaurant"][0] for o in orders], s=8,
                          marker="s", color="#1f77b4", zorder=3, label=f"restaurant of an order ({len(orders)})")
    totals = feed.get("totals", {})
    supply_ax.set_title(f"supply: {totals.get('available_drivers', 0)} drivers available")
    demand_ax.set_title(f"demand: {totals.get('requests', 0)} requests, {totals.get('assigned', 0)} assigned, "
                        f"{totals.get('refused', 0)} refused")
    for ax in (supply_ax, demand_ax):
        ax.autoscale_view()
        lat = h3.cell_to_latlng(cells[0]["h3"])[0] if cells else 0.0
        ax.set_aspect(1 / math.cos(math.radians(lat)))
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
        if not cells:
            ax.text(0.5, 0.5, "the feed was empty", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{feed.get('topic', 'dispatch.supply_demand')}: each cell's shares added up at the end of the run")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
