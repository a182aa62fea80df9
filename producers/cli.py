"""`geodispatch produce ...` and `geodispatch simulate`: publish contract messages from the command line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click

from infra.settings import MATCHING_POLICIES
from producers import commandline
from producers.pacing import RateLimiter
from producers.publisher import Publisher
from producers.simulator import SCENARIOS
from schemas.models import AssignmentRequested, DriverStatus, LocationPing, Message, TripEvent

FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["json", "avro"]), default="json", show_default=True,
    help="Value encoding: JSON, or Confluent-framed Avro with the schemas in schemas/avro.",
)
COUNT = click.option(
    "--count", type=click.IntRange(min=1), default=1, show_default=True,
    help="How many records; '{i}' in an id is replaced by the record's number (0, 1, ...).",
)
RATE = click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
                    help="At most this many records per second (default: as fast as possible).")
LINGER = click.option("--linger-ms", type=click.IntRange(min=0), default=5, show_default=True,
                      help="How long the producer waits to batch records together.")
QUIET = click.option("--quiet", "-q", is_flag=True, help="Print only the summary line.")
TS = click.option("--ts", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"]),
                  default=None, help="Event time, ISO-8601 with an offset (default: now).")


# A comparison's drain: long enough for the last orders' food and drivers at the demo's speed-ups.
COMPARE_DRAIN_S = 300.0


def _policies(_ctx, _param, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    policies = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [p for p in policies if p not in MATCHING_POLICIES]
    if unknown or not policies or len(set(policies)) != len(policies):
        raise click.BadParameter(f"{value!r}: name each of {', '.join(MATCHING_POLICIES)} at most once")
    return policies


def _now_or(ts: datetime | None) -> datetime:
    return ts or datetime.now(UTC)


def _coordinate_pair(_ctx, _param, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lat, lng = (float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not LAT,LNG") from None
    return lat, lng


def _send_all(build: Callable[[int], Message], count: int, fmt: str, rate: float | None, linger_ms: int,
              quiet: bool) -> None:
    """Builds and sends `count` messages, prints where each landed, exits 1 if any delivery failed."""
    settings = commandline.settings()

    async def run() -> int:
        limiter = RateLimiter(rate)
        started = time.monotonic()
        async with Publisher(settings, fmt=fmt, linger_ms=linger_ms) as publisher:
            futures = []
            for number in range(count):
                await limiter.acquire()
                futures.append(await publisher.send(build(number)))
            tally = await publisher.flush()
        if not quiet:
            for future in futures:
                if not future.cancelled() and future.exception() is None:
                    meta = future.result()
                    click.echo(f"{meta.topic}[{meta.partition}]@{meta.offset}")
        seconds = time.monotonic() - started
        click.echo(f"produced {tally.delivered} of {tally.sent} records ({fmt}) in {seconds:.2f}s"
                   + (f"; {tally.failed} failed: {tally.errors[0]}" if tally.failed else ""))
        return tally.failed

    try:
        failed = commandline.run(run())
    except ValueError as exc:  # a pydantic validation error: the flags do not make a valid message
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if failed:
        sys.exit(commandline.EXIT_FAILED)


def _fill(template: str, number: int) -> str:
    return template.replace("{i}", str(number))


@click.group()
def produce() -> None:
    """Publish contract messages: the right topic (region key), key and encoding, delivery confirmed.
    Exit codes: 0 every record acknowledged, 1 some failed, 2 bad flags, 3 Kafka unreachable."""


@produce.command("ping")
@click.option("--driver-id", required=True, help="Driver id; '{i}' is replaced with the record number.")
@click.option("--lat", type=float, required=True, help="Latitude in degrees.")
@click.option("--lng", type=float, required=True, help="Longitude in degrees.")
@click.option("--speed-mps", type=float, default=None, help="Speed in metres per second.")
@click.option("--heading-deg", type=float, default=None, help="Heading in degrees from north.")
@click.option("--accuracy-m", type=float, default=None, help="GPS accuracy in metres.")
@TS
@COUNT
@RATE
@FORMAT
@LINGER
@QUIET
def produce_ping(driver_id, lat, lng, speed_mps, heading_deg, accuracy_m, ts, count, rate, fmt, linger_ms, quiet):
    """A LocationPing to driver_locations.{geo} (geo from --lat/--lng), keyed by driver_id."""
    _send_all(lambda n: LocationPing(
        driver_id=_fill(driver_id, n), lat=lat, lng=lng, speed_mps=speed_mps, heading_deg=heading_deg,
        accuracy_m=accuracy_m, ts=_now_or(ts),
    ), count, fmt, rate, linger_ms, quiet)


@produce.command("status")
@click.option("--driver-id", required=True, help="Driver id; '{i}' is replaced with the record number.")
@click.option("--online/--offline", default=None, help="The driver's own on/off switch (omit to leave it).")
@click.option("--eligibility", type=click.Choice(["ACTIVE", "SUSPENDED", "INACTIVE"]), default=None,
              help="The profiles service's verdict (omit to leave it).")
@TS
@COUNT
@RATE
@FORMAT
@LINGER
@QUIET
def produce_status(driver_id, online, eligibility, ts, count, rate, fmt, linger_ms, quiet):
    """A DriverStatus to driver_status, keyed by driver_id."""
    _send_all(lambda n: DriverStatus(
        driver_id=_fill(driver_id, n), online=online, eligibility=eligibility, ts=_now_or(ts),
    ), count, fmt, rate, linger_ms, quiet)


@produce.command("trip")
@click.option("--order-id", required=True, help="Order id; '{i}' is replaced with the record number.")
@click.option("--driver-id", required=True, help="The assigned driver's id.")
@click.option("--status", type=click.Choice(["picked_up", "delivered", "cancelled"]), required=True,
              help="delivered and cancelled free the driver.")
@TS
@COUNT
@RATE
@FORMAT
@LINGER
@QUIET
def produce_trip(order_id, driver_id, status, ts, count, rate, fmt, linger_ms, quiet):
    """A TripEvent to trip_events, keyed by driverId."""
    _send_all(lambda n: TripEvent(
        orderId=_fill(order_id, n), driverId=_fill(driver_id, n), status=status, ts=_now_or(ts),
    ), count, fmt, rate, linger_ms, quiet)


@produce.command("request")
@click.option("--order-id", required=True, help="Order id; '{i}' is replaced with the record number.")
@click.option("--restaurant", required=True, callback=_coordinate_pair, metavar="LAT,LNG",
              help="Restaurant coordinates; they choose the region topic unless --geo-key is given.")
@click.option("--customer", required=True, callback=_coordinate_pair, metavar="LAT,LNG", help="Customer coordinates.")
@click.option("--prep-min", type=float, default=0, show_default=True, help="Preparation time left, minutes.")
@click.option("--radius-km", type=float, default=5, show_default=True, help="Search radius, km.")
@click.option("--geo-key", default=None, help="Region topic to use instead of the restaurant's (e.g. 4_-7).")
@click.option("--items", default=None, help="Items as a JSON array.")
@click.option("--total", type=float, default=None, help="Order total.")
@click.option("--instructions", default=None, help="Special instructions.")
@COUNT
@RATE
@FORMAT
@LINGER
@QUIET
def produce_request(order_id, restaurant, customer, prep_min, radius_km, geo_key, items, total, instructions,
                    count, rate, fmt, linger_ms, quiet):
    """An AssignmentRequested to driver_assignment.requests.{geo}, keyed by orderId (seed 003's shape)."""
    try:
        parsed_items = json.loads(items) if items else None
    except ValueError:
        raise click.BadParameter("not JSON", param_hint="--items") from None

    def build(number: int) -> AssignmentRequested:
        from infra.topics import region_key

        return AssignmentRequested(
            eventId=f"{_fill(order_id, number)}:requested", eventType="AssignmentRequested",
            occurredAt=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            orderId=_fill(order_id, number), geoKey=geo_key or region_key(*restaurant),
            restaurantLatitude=restaurant[0], restaurantLongitude=restaurant[1],
            customerLatitude=customer[0], customerLongitude=customer[1],
            preparationTime=prep_min, radius=radius_km, items=parsed_items, totalAmount=total,
            specialInstructions=instructions,
        )

    _send_all(build, count, fmt, rate, linger_ms, quiet)


@click.command()
@click.option("--city", type=click.Choice(["new-york", "lagos", "london"]), default="new-york", show_default=True,
              help="City preset: centre, extent and region key.")
@click.option("--drivers", type=click.IntRange(min=0), default=50, show_default=True, help="Simulated drivers.")
@click.option("--orders-per-s", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Mean order arrival rate (Poisson).")
@click.option("--duration", "duration_s", type=click.FloatRange(min=0, min_open=True), default=60, show_default=True,
              help="Simulated seconds to run.")
@click.option("--ping-interval", "ping_interval_s", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between a driver's pings (default: GEODISPATCH_HEARTBEAT_INTERVAL_S).")
@click.option("--dropout-per-hour", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="How often an idle driver loses signal (per driver per hour); the pipeline marks it offline.")
@click.option("--malformed-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of pings and requests replaced by a malformed record (they end in the DLQ).")
@click.option("--speedup", type=click.FloatRange(min=1), default=1.0, show_default=True,
              help="Trips progress this many times faster than the reported speeds (short demos still deliver).")
@click.option("--pace", type=click.Choice(["realtime", "max"]), default="realtime", show_default=True,
              help="realtime: one simulated second per second; max: as fast as possible (event times end now).")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same drivers, paths and orders.")
@click.option("--run-id", default=None,
              help="Part of every order id (default: the start time, so runs on one broker never share orders).")
@FORMAT
@click.option("--live/--no-live", default=False, help="Redraw a live view of the pipeline every second.")
@click.option("--stats-url", "stats_urls", multiple=True,
              help="A worker's /stats URL for the live view and summary; once per process of a deployment "
                   "of several (their figures are added up).")
@click.option("--api-url", default=None,
              help="The sessions API's base URL for the hints at the end (default: the first --stats-url's).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write summary.json and the run's records here.")
@click.option("--pictures/--no-pictures", default=False, help="With --results: draw the map and latency PNGs.")
@click.option("--wait-ready", "wait_ready_s", type=click.FloatRange(min=0), default=0, show_default=True,
              help="With --stats-url: first wait up to this many seconds for every worker to be ready (exit 3 if not).")
@click.option("--settle", "settle_s", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds to wait for outstanding answers after the last request.")
@click.option("--scenario", type=click.Choice(list(SCENARIOS)), default="balanced", show_default=True,
              help="balanced: orders all over the city; shortage: half of them in one district with few drivers; "
                   "rush: a burst of 60 orders at one restaurant.")
@click.option("--compare", "policies", callback=_policies, default=None, metavar="POLICY,POLICY",
              help="Run the same city once per matching policy (greedy, batch), each against a worker of its own "
                   "that this command starts on its own topics and Redis keys, and report them side by side "
                   "(needs the worker installed; files and pictures in --results, or a temporary directory).")
@click.option("--workers", type=click.IntRange(1, 8), default=1, show_default=True,
              help="With --compare: workers per policy; each matches its own share of the request partitions.")
@click.option("--drain", "drain_s", type=click.FloatRange(min=0), default=None,
              help="After --duration, simulated seconds more without new orders until every assigned order is "
                   "picked up (default: 300 with --compare, for the waits; 0 otherwise).")
def simulate(city, drivers, orders_per_s, duration_s, ping_interval_s, dropout_per_hour, malformed_fraction, speedup,
             pace, seed, run_id, fmt, live, stats_urls, api_url, results_dir, pictures, wait_ready_s, settle_s,
             scenario, policies, workers, drain_s):
    """Simulate a city: drivers go online, move and ping, drop out, accept and finish trips; orders arrive.
    Prints a summary (JSON with --results). Exit 1 if any record failed to be delivered, 3 if Kafka is down."""
    from producers.cities import CITIES
    from producers.live import run_simulation
    from producers.simulator import SimulationConfig

    settings = commandline.settings()
    if workers > 1 and not policies:
        raise click.UsageError("--workers applies to --compare only")
    if policies and (stats_urls or api_url):
        raise click.UsageError("--compare starts its own workers: --stats-url and --api-url do not apply")
    if stats_urls and wait_ready_s > 0:
        _wait_for_workers(stats_urls, wait_ready_s)
    config = SimulationConfig(
        city=CITIES[city], drivers=drivers, orders_per_s=orders_per_s,
        ping_interval_s=ping_interval_s or settings.heartbeat_interval_s, dropout_per_hour=dropout_per_hour,
        malformed_fraction=malformed_fraction, speedup=speedup, seed=seed,
        run_id=run_id if run_id is not None else datetime.now(UTC).strftime("%H%M%S-"),
        scenario=SCENARIOS[scenario],
    )
    run = {"duration_s": duration_s, "pace": pace, "fmt": fmt, "live": live, "settle_s": settle_s,
           "drain_s": drain_s if drain_s is not None else (COMPARE_DRAIN_S if policies else 0.0)}
    if policies:
        _compare(settings, config, policies, results_dir, pictures, workers, run)
        return
    report = commandline.run(run_simulation(settings, config, stats_urls=stats_urls, results_dir=results_dir, **run))
    click.echo(report.text())
    if results_dir is not None and pictures:
        from producers.plots import draw_all

        for path in draw_all(results_dir):
            click.echo(f"picture: {path}")
    if stats_urls or api_url:
        for line in _api_hints(api_url or stats_urls[0].rsplit("/stats", 1)[0], stats_urls, report):
            click.echo(line)
    if report.delivery_failures:
        sys.exit(commandline.EXIT_FAILED)


def _compare(settings, config, policies: tuple[str, ...], results_dir: Path | None, pictures: bool, workers: int,
             run: dict) -> None:
    import tempfile

    from producers.compare import compare, draw, table

    directory = results_dir or Path(tempfile.mkdtemp(prefix="geodispatch-compare-"))
    outcomes = compare(settings, config, policies, directory, click.echo, workers, **run)
    click.echo(f"\n{config.scenario.name}: {config.scenario.description}; seed {config.seed}, "
               f"{workers} worker(s) per policy\n")
    click.echo(table(outcomes))
    if pictures:
        for path in draw(directory, outcomes):
            click.echo(f"picture: {path}")
    click.echo(f"results: {directory}")


def _wait_for_workers(stats_urls: tuple[str, ...], seconds: float) -> None:
    from producers.live import fetch_stats

    deadline = time.monotonic() + seconds
    waiting = list(stats_urls)
    while waiting and time.monotonic() < deadline:
        waiting = [url for url in waiting if not (fetch_stats(url) or {}).get("ready")]
        if waiting:
            time.sleep(0.5)
    if waiting:
        click.echo(f"error: no ready worker answered at {', '.join(waiting)} within {seconds:.0f}s", err=True)
        sys.exit(commandline.EXIT_UNREACHABLE)


def _api_hints(base: str, stats_urls: tuple[str, ...], report) -> list[str]:
    """How to look at what the run left behind in the sessions API."""
    import h3

    from producers.cities import CITIES

    city = next(c for c in CITIES.values() if c.name == report.city)
    cell = h3.latlng_to_cell(city.lat, city.lng, 9)
    driver = report.extra.get("sample_driver")
    lines = ["", "sessions API (while the worker runs):"]
    if driver:
        lines.append(f"  curl -s {base}/driver-sessions/sessions/{driver}")
    lines += [f"  curl -s '{base}/driver-sessions/sessions/nearby?h3={cell}&k=5&limit=10'",
              *(f"  curl -s {url}" for url in stats_urls),
              "  (simulated drivers stop pinging when the run ends: nearby offers them for another"
              " GEODISPATCH_LOCATION_MAX_AGE_S, 60 s by default)"]
    return lines
