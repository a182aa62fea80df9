"""Runs the simulated city against the real broker: sends what it says, feeds it the pipeline's answers,
measures request-to-answer latency, draws a live terminal view and writes the run's results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from consumers.supply_demand import write_supply_demand
from infra.percentiles import percentiles
from infra.settings import Settings
from infra.topics import TopicNames
from producers.plots import SUPPLY_DEMAND_FILE
from producers.publisher import BrokerUnreachable, Publisher
from producers.simulator import CitySimulation, Outgoing, SimulationConfig
from schemas.codec import InvalidMessage, default_codec
from schemas.models import AssignmentResponse

log = structlog.get_logger(__name__)
VIEW_EVERY_S = 1.0
PLAIN_VIEW_EVERY_S = 5.0


def fetch_stats(url: str | None) -> dict[str, Any] | None:
    """A worker's /stats document, or None when there is no URL or it does not answer."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        log.debug("stats_unavailable", url=url, error=str(exc))
        return None


def _total(counters: dict[str, float] | None) -> float:
    return sum((counters or {}).values())


@dataclass
class Report:
    city: str
    seed: int
    pace: str
    simulated_s: float
    wall_s: float
    drivers: dict[str, int]
    sent: dict[str, Any]
    answers: dict[str, int]
    latency_ms: dict[str, float | None]
    delivery_failures: int
    worker: dict[str, Any] | None = None
    results_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        s, a, lat = self.sent, self.answers, self.latency_ms
        rate = max(self.simulated_s, 1e-9)
        lines = [
            f"summary: {self.city}, {self.simulated_s:.0f} s simulated in {self.wall_s:.1f} s ({self.pace}), "
            f"seed {self.seed}",
            f"  drivers:  {sum(self.drivers.values())} ({self.drivers['available']} available, "
            f"{self.drivers['on_trip']} on a trip, {self.drivers['silent']} without signal, "
            f"{self.drivers['offline']} offline)",
            f"  sent:     {s['pings']} pings ({s['pings'] / rate:.1f}/s), {s['requests']} requests "
            f"({s['requests'] / rate:.2f}/s), {s['statuses']} status changes, {s['trip_events']} trip events, "
            f"{sum(s['malformed'].values())} malformed {s['malformed'] or ''}".rstrip(),
            f"  answers:  {a['assigned']} assigned, {a['failed']} failed, {a['unanswered']} unanswered; "
            f"{a['picked_up']} picked up, {a['delivered']} delivered, {a['declined']} declined",
            "  latency:  request sent -> answer read: " + _percentiles_text(lat),
        ]
        if self.worker:
            w = self.worker
            lines.append(
                f"  worker:   {w['drivers_online']} online, {w['drivers_available']} available, "
                f"{w['pings']:.0f} pings processed, assignment latency {_percentiles_text(w['latency_ms'])}, "
                f"{w['dead_letters']:.0f} dead letters"
            )
        if self.results_dir:
            lines.append(f"  results:  {self.results_dir}")
        return "\n".join(lines)


def _percentiles_text(values: dict[str, float | None]) -> str:
    if not values or values.get("p50") is None:
        return "no samples"
    return " ".join(f"{name} {values[name]:.0f} ms" for name in ("p50", "p95", "p99"))


def worker_view(documents: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The few numbers the live view and the summary show, of every worker's /stats together: a
    deployment of a process per role counts drivers in one and answers in another. The latency is the
    worst of the processes that answered requests."""
    found = [document for document in documents if document]
    if not found:
        return None
    answering = [d["assignments"]["latency_seconds"] for d in found
                 if _total(d.get("assignments", {}).get("requests"))]

    def worst(name: str) -> float | None:
        values = [latency[name] for latency in answering if latency.get(name) is not None]
        return max(values) * 1000 if values else None

    return {
        "drivers_online": sum(d.get("drivers", {}).get("online", 0) for d in found),
        "drivers_available": sum(d.get("drivers", {}).get("available", 0) for d in found),
        "pings": sum(_total(d.get("pings")) for d in found),
        "requests": sum(_total(d.get("assignments", {}).get("requests")) for d in found),
        "failures": sum(_total(d.get("assignments", {}).get("failures")) for d in found),
        "dead_letters": sum(_total(d.get("dead_letters")) for d in found),
        "latency_ms": {name: worst(name) for name in ("p50", "p95", "p99")},
    }


def fetch_view(urls: tuple[str, ...]) -> dict[str, Any] | None:
    return worker_view([fetch_stats(url) for url in urls])


class LiveView:
    """Redraws a few lines in place on a terminal; prints a line every few seconds otherwise."""

    def __init__(self, enabled: bool, title: str, duration_s: float) -> None:
        self.enabled = enabled
        self.title = title
        self.duration_s = duration_s
        self._tty = sys.stdout.isatty()
        self._drawn = 0
        self._last_plain = -math.inf
        self._previous: tuple[float, dict[str, Any]] | None = None
        self._rates = (0.0, 0.0)

    def draw(self, sim: CitySimulation, answers: dict[str, int], latencies: list[float],
             worker: dict[str, Any] | None, final: bool = False) -> None:
        """final: the run is over; keep showing the last rates rather than the zero of the settling time."""
        if not self.enabled:
            return
        now = time.monotonic()
        states, counts = sim.driver_states(), sim.counts
        current = {"pings": counts.pings, "requests": counts.requests}
        if self._previous is not None and not final:
            elapsed = max(now - self._previous[0], 1e-6)
            self._rates = ((current["pings"] - self._previous[1]["pings"]) / elapsed,
                           (current["requests"] - self._previous[1]["requests"]) / elapsed)
        self._previous = (now, current)
        pings_rate, requests_rate = self._rates
        p = dict(zip(("p50", "p95", "p99"), percentiles(latencies, 0.5, 0.95, 0.99), strict=True))
        lines = [
            f"{self.title}   t = {sim.now_s:5.0f} s of {self.duration_s:.0f} s",
            f"  drivers      online {states['available'] + states['on_trip']:>4}   available {states['available']:>4}"
            f"   on a trip {states['on_trip']:>4}   no signal {states['silent']:>3}",
            f"  sending      pings {pings_rate:6.1f}/s   requests {requests_rate:5.2f}/s   "
            f"malformed {sum(counts.malformed.values())}",
            f"  answers      assigned {answers['assigned']:>5}   failed {answers['failed']:>4}   "
            f"delivered {counts.delivered:>4}   latency {_percentiles_text(p)}",
        ]
        if worker:
            lines.append(
                f"  worker       online {worker['drivers_online']:>4}   available {worker['drivers_available']:>4}   "
                f"assignment p50/p95/p99 {_percentiles_text(worker['latency_ms'])}   "
                f"dead letters {worker['dead_letters']:.0f}"
            )
        else:
            lines.append("  worker       (no /stats: pass --stats-url)")
        if self._tty:
            if self._drawn:
                sys.stdout.write(f"\x1b[{self._drawn}F\x1b[J")
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()
            self._drawn = len(lines)
        elif now - self._last_plain >= PLAIN_VIEW_EVERY_S:
            self._last_plain = now
            print(" | ".join(line.strip() for line in lines[1:]), flush=True)


class ResponseReader:
    """Reads driver_assignment.responses from its current end, so only this run's answers are seen."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False,
            **settings.kafka_client_options(),
        )
        self._codec = default_codec()

    async def start(self) -> None:
        try:
            await self._consumer.start()
        except KafkaConnectionError as exc:
            await self._consumer.stop()
            raise BrokerUnreachable(f"cannot reach Kafka: {exc}") from exc
        # A fresh metadata fetch: partitions_for_topic only knows topics the consumer already follows.
        cluster = await self._consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(self.topic)
        if not partitions:
            await self._consumer.stop()
            raise BrokerUnreachable(f"topic {self.topic} does not exist; run `geodispatch topics apply`")
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        for tp in assigned:  # pin the positions now, before the first request is sent
            await self._consumer.position(tp)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> list[AssignmentResponse]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        responses = []
        for records in batches.values():
            for record in records:
                try:
                    responses.append(self._codec.decode(AssignmentResponse, record.value))
                except InvalidMessage as exc:
                    log.warning("undecodable_response", partition=record.partition, offset=record.offset,
                                error=str(exc))
        return responses


async def run_simulation(
    settings: Settings,
    config: SimulationConfig,
    duration_s: float,
    pace: str = "realtime",
    fmt: str = "json",
    live: bool = False,
    stats_urls: tuple[str, ...] = (),
    results_dir: Path | None = None,
    settle_s: float = 5.0,
    tick_s: float = 0.5,
    drain_s: float = 0.0,
) -> Report:
    """Runs the city for `duration_s` simulated seconds; then, for up to `drain_s` more, with no new
    order, until every order answered so far has been picked up (a comparison's waits), and waits up to
    `settle_s` for the answers still outstanding."""
    wall_start = time.monotonic()
    now = datetime.now(UTC)
    # As fast as possible, event times are laid out so that the last one is now (never in the future).
    start = now if pace == "realtime" else now - timedelta(seconds=duration_s)
    sim = CitySimulation(config, start)
    names_title = f"geodispatch · {config.city.name} · {config.drivers} drivers · {config.orders_per_s:g} orders/s"
    view = LiveView(live, names_title, duration_s)
    sent_at: dict[str, float] = {}
    latencies_ms: list[float] = []
    answers = {"assigned": 0, "failed": 0}
    worker: dict[str, Any] | None = None

    names = TopicNames(settings.topic_prefix)
    reader = ResponseReader(settings, names.responses)
    await reader.start()
    publisher = Publisher(settings, fmt=fmt, linger_ms=5, client_id="geodispatch-simulator")
    try:
        await publisher.start()
    except BrokerUnreachable:
        await reader.stop()
        raise

    async def send(outgoing: list[Outgoing]) -> None:
        for item in outgoing:
            if item.message is not None:
                await publisher.send(item.message)
                order_id = getattr(item.message, "orderId", None)
                if order_id is not None and item.message.__class__.__name__ == "AssignmentRequested":
                    sent_at[order_id] = time.monotonic()
            else:
                bad = item.malformed
                topic = (publisher.names.locations(bad.region) if bad.family == "locations"
                         else publisher.names.requests(bad.region))
                await publisher.send_raw(topic, bad.key, bad.value)

    async def read_answers(timeout_ms: int) -> None:
        for response in await reader.poll(timeout_ms):
            started = sent_at.pop(response.orderId, None)
            if started is None:
                continue  # not ours, or a repeated answer
            latencies_ms.append((time.monotonic() - started) * 1000)
            answers[response.status] += 1
            await send(sim.on_response(response))

    async def listen() -> None:
        # Its own task, so an answer is timed when it arrives, not when the sending loop next looks.
        while True:
            await read_answers(500)

    listener = asyncio.create_task(listen())
    last_view = -math.inf

    async def tick(seconds: float) -> None:
        nonlocal last_view, worker
        await send(sim.advance(seconds))
        # realtime: one simulated second per wall second; max: just let the listener run
        await asyncio.sleep(max(0.0, wall_start + sim.now_s - time.monotonic()) if pace == "realtime" else 0)
        if listener.done():
            listener.result()  # re-raises what stopped it
        if time.monotonic() - last_view >= VIEW_EVERY_S:
            last_view = time.monotonic()
            if stats_urls:
                worker = await asyncio.to_thread(fetch_view, stats_urls)
            view.draw(sim, answers, latencies_ms, worker)

    try:
        while sim.now_s < duration_s:
            await tick(min(tick_s, duration_s - sim.now_s))
        sim.stop_orders()
        drain_until = sim.now_s + drain_s
        while (sent_at or sim.awaiting_pickup()) and sim.now_s < drain_until:
            await tick(tick_s)
        await publisher.flush()
        settle_until = time.monotonic() + settle_s
        while sent_at and time.monotonic() < settle_until and not listener.done():
            await asyncio.sleep(0.1)
        await publisher.flush()
        if stats_urls:
            # The worker's counters lag the last record by its commit interval.
            await asyncio.sleep(min(settle_s, 1.5))
            worker = await asyncio.to_thread(fetch_view, stats_urls)
        view.draw(sim, answers, latencies_ms, worker, final=True)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await reader.stop()
        await publisher.stop()

    counts = sim.counts
    report = Report(
        city=config.city.name,
        seed=config.seed,
        pace=pace,
        simulated_s=sim.now_s,
        wall_s=time.monotonic() - wall_start,
        drivers=sim.driver_states(),
        sent={"pings": counts.pings, "requests": counts.requests, "statuses": counts.statuses,
              "trip_events": counts.trip_events, "malformed": dict(counts.malformed), "dropouts": counts.dropouts},
        answers={"assigned": answers["assigned"], "failed": answers["failed"], "unanswered": len(sent_at),
                 "picked_up": counts.picked_up, "delivered": counts.delivered, "declined": counts.declined},
        latency_ms=dict(zip(("p50", "p95", "p99"), percentiles(latencies_ms, 0.5, 0.95, 0.99), strict=True)),
        delivery_failures=publisher.tally.failed,
        worker=worker,
        results_dir=str(results_dir) if results_dir else None,
        extra={"sample_driver": next((d.driver_id for d in sim.drivers if d.state == "available"),
                                     sim.drivers[0].driver_id if sim.drivers else None)},
    )
    if results_dir is not None:
        write_results(results_dir, report, sim, latencies_ms)
        try:
            # The demo map's supply/demand layer (producers.plots.draw_all draws it when the file is there).
            await write_supply_demand(settings, results_dir / SUPPLY_DEMAND_FILE)
        except Exception as exc:  # the run's own results are written; the layer is left out
            log.warning("supply_demand_unreadable", topic=names.supply_demand, error=repr(exc))
    log.info("simulation_finished", sent=publisher.tally.sent, delivered=publisher.tally.delivered,
             failed=publisher.tally.failed)
    return report


def write_results(directory: Path, report: Report, sim: CitySimulation, latencies_ms: list[float]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.json").write_text(json.dumps(asdict(report), indent=2))
    (directory / "summary.txt").write_text(report.text() + "\n")
    (directory / "city.json").write_text(json.dumps(sim.snapshot()))
    (directory / "latencies_ms.json").write_text(json.dumps([round(v, 3) for v in latencies_ms]))
