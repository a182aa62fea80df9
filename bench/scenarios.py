"""The scenarios of `make bench`. Each starts what it needs on its own topic and Redis prefix, drives
load from separate processes, measures from outside, checks correctness, and returns a result dict
(written to JSON and drawn to PNG by bench.report)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench import baselines
from bench.deploy import (
    BOOTSTRAP,
    REDIS_URL,
    ROOT,
    Deployment,
    OffsetWatcher,
    Sampler,
    WorkerProcess,
    counter_sum,
    cpu_seconds,
    end_offsets,
    listener_pid,
    peak_rss_mib,
    pings_seen,
    redis_cpu_seconds,
)
from bench.load import ping_records
from bench.stats import summarize, window_rate
from streams.processes import niceness


@dataclass
class Sizes:
    """How big each scenario is; `quick` is for trying the suite, `full` is what `make bench` runs."""

    city_drivers: int = 100_000
    # Backlogs big enough to last well over ten seconds at the batched ping path's rate.
    drain_pings: int = 600_000
    ramp_rates: tuple[int, ...] = (
        500, 1_000, 1_500, 2_000, 3_000, 4_000, 6_000, 8_000, 10_000, 12_000, 15_000, 20_000, 25_000,
    )
    ramp_step_s: float = 6.0
    scale_pings: int = 720_000
    scale_drivers: int = 20_000
    assign_drivers: int = 10_000
    api_seconds: float = 10.0
    # The sessions API process driven open loop at each of these rates (requests a second).
    api_open_rates: tuple[int, ...] = (500, 1_000, 2_000)
    requests: int = 3_000
    mixed_seconds: float = 15.0
    mixed_ping_rate: int = 5_000
    mixed_request_rate: int = 300
    mixed_grace_s: float = 30.0  # answers later than this after the load ends count as unanswered
    # A city twice the seed's: 50,000 drivers pinging every 5 s beside a steady trickle of orders.
    fleet_drivers: int = 50_000
    fleet_ping_rate: int = 10_000
    fleet_request_rate: int = 100
    # Requests arriving while the worker works through a backlog of pings (issue 22's isolation).
    isolation_backlog: int = 100_000
    isolation_request_rate: int = 100
    isolation_seconds: float = 10.0
    # Cold restarts with the default location age, each after the city pinged once more.
    default_age_restarts: int = 5
    requests_bound_s: float = 60.0
    baseline_producer_records: int = 500_000
    # Enough to outlast the profile: the worker drains tens of thousands a second.
    profile_pings: int = 800_000
    profile_seconds: float = 12.0
    # The real-time gateway (issue 25): subscribers held by one process, a step at a time, each
    # following a booking that moves once a second; a share of them on Socket.IO, the rest on SSE.
    gateway_subscribers: tuple[int, ...] = (500, 1_000, 2_000, 4_000, 8_000)
    gateway_warmup_s: float = 3.0
    gateway_seconds: float = 15.0
    gateway_socketio_share: float = 0.1

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            city_drivers=10_000,
            drain_pings=60_000,
            ramp_rates=(500, 1_000, 2_000),
            ramp_step_s=4,
            scale_pings=20_000,
            scale_drivers=10_000,
            assign_drivers=5_000,
            api_seconds=4,
            api_open_rates=(500,),
            requests=1_000,
            mixed_seconds=6,
            fleet_drivers=10_000,
            fleet_ping_rate=2_000,
            fleet_request_rate=50,
            isolation_backlog=20_000,
            isolation_seconds=5,
            default_age_restarts=1,
            baseline_producer_records=100_000,
            profile_pings=20_000,
            profile_seconds=6,
            gateway_subscribers=(200, 500),
            gateway_seconds=6,
        )


@dataclass
class Run:
    run_id: str
    run_dir: Path
    sizes: Sizes
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    out: Path | None = None
    # Whose workers run (bench.pairs runs an earlier commit's from a worktree); the measuring is ours.
    checkout: Path = ROOT

    def deployment(self, tag: str, **kwargs: Any) -> Deployment:
        return Deployment(workdir=self.run_dir, prefix=f"{self.run_id}.{tag}.", checkout=self.checkout, **kwargs)

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- following a worker from outside -------------------------------------------------------------


def follow(workers: list[WorkerProcess], count, target: int, timeout: float, settle=None) -> list[tuple[float, ...]]:
    """Polls /stats of every worker until `count(stats)` summed reaches `target` (and `settle` holds);
    returns (time, total, per-worker counts...) samples."""
    series: list[tuple[float, ...]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        per = []
        stats = []
        for worker in workers:
            try:
                s = worker.stats()
            except (OSError, RuntimeError, ValueError):
                s = None
            stats.append(s)
            per.append(count(s) if s else 0)
        series.append((time.time(), sum(per), *per))
        if sum(per) >= target and (settle is None or all(s and settle(s) for s in stats)):
            return series
        for worker in workers:
            if not worker.alive():
                raise RuntimeError(f"worker {worker.name} died:\n{worker.log_tail()}")
        time.sleep(0.25)
    raise TimeoutError(f"reached {series[-1][1] if series else 0} of {target} within {timeout}s")


def index_settled(stats: dict) -> bool:
    return stats.get("index", {}).get("pending_writes", 1) == 0


def sessions_seen(stats: dict) -> int:
    return pings_seen(stats) + int(counter_sum(stats.get("status_changes")))


async def redis_count(pattern: str) -> int:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    try:
        n = 0
        async for _ in redis.scan_iter(match=pattern, count=10_000):
            n += 1
        return n
    finally:
        await redis.aclose()


# -- 1 and 3: pings into a city of 100,000 drivers, restart recovery, baselines ------------------


# Warm: the data directory kept. Cold: wiped, the tables restored from their changelogs, first by
# faust's recovery alone (the same-run baseline), then as the worker does by default, caught up in
# bulk first (streams/restore.py). The last one leaves the worker the drain below measures.
RESTARTS = (
    ("warm", {}),
    ("cold_faust_only", {"GEODISPATCH_BULK_RESTORE_MIN_RECORDS": "0"}),
    ("cold", {}),
)
# The default location age (60 s): positions are read back from the last minute of the ping log. The
# heartbeat timeout is a minute too (not 15 s), so that the city, which pinged once just before each
# start, is not timed out while the restart is measured; the log is then read back for 60 s, as with
# every default.
DEFAULT_AGE = {"GEODISPATCH_LOCATION_MAX_AGE_S": "60", "GEODISPATCH_HEARTBEAT_INTERVAL_S": "20",
               "GEODISPATCH_MISSED_HEARTBEATS": "3"}


def pings_and_restart(run: Run) -> None:
    s = run.sizes
    dep = run.deployment("p")
    dep.apply_topics()
    loc_topic = dep.names.locations("4_-7")
    try:
        run.log(f"pings: producing a city of {s.city_drivers} drivers (status + first ping each)")
        city = dep.tool("bench.load", "city", "--drivers", str(s.city_drivers))
        worker = dep.start_worker("w1")
        sampler = Sampler(worker.pid)
        sampler.start()
        worker.wait_ready()
        series = follow([worker], sessions_seen, 2 * s.city_drivers, timeout=400, settle=index_settled)
        load_s = series[-1][0] - worker.started_at
        rss_loaded = sampler.samples[-1][1] if sampler.samples else None
        sampler.stop()
        run.log(f"pings: city loaded in {load_s:.1f}s from worker start; RSS {rss_loaded:.0f} MiB")
        city_result = {
            "drivers": s.city_drivers,
            "records": 2 * s.city_drivers,
            "producer": city,
            "seconds_from_start": round(load_s, 2),
            "rate_window": round(window_rate([(t, c) for t, c, *_ in series]), 1),
            "rss_mib_loaded": round(rss_loaded, 1),
            "peak_rss_mib": peak_rss_mib(worker.pid),
            "series": [(round(t - worker.started_at, 2), c) for t, c, *_ in series],
        }

        restart = {"drivers_in_state": s.city_drivers, "city_load": city_result}
        for kind, env in RESTARTS:
            worker.stop()
            if kind != "warm":
                shutil.rmtree(dep.data_dir("w1"), ignore_errors=True)
            run.log(f"restart: {kind} start with {s.city_drivers} drivers in state")
            restart[kind], worker = asyncio.run(measure_restart(
                dep, lambda e=env: dep.start_worker("w1", **e), f"{run.run_id}-rs{kind}"
            ))
            run.log(f"restart: {kind}: {restart[kind]}")
        restart["cold_default_age"] = []
        for repetition in range(s.default_age_restarts):
            worker.stop()
            shutil.rmtree(dep.data_dir("w1"), ignore_errors=True)
            dep.tool("bench.load", "pings", "--drivers", str(s.city_drivers), "--count", str(s.city_drivers))
            run.log(f"restart: cold, default location age, {repetition + 1}/{s.default_age_restarts}")
            marks, worker = asyncio.run(measure_restart(
                dep, lambda: dep.start_worker("w1", **DEFAULT_AGE), f"{run.run_id}-rsage{repetition}"
            ))
            restart["cold_default_age"].append(marks)
            run.log(f"restart: cold, default location age: {marks}")
        run.results["restart"] = restart

        # Capacity: a backlog produced while the worker is stopped, drained by it alone.
        worker.stop()
        base = asyncio.run(end_offsets([loc_topic]))[loc_topic]
        drain, worker = drain_backlog(run, dep, s.city_drivers, s.drain_pings)

        ramp = asyncio.run(ping_ramp(run, dep, worker, loc_topic))
        sustained = max((st["offered"] for st in ramp["steps"] if st["bounded"]), default=0)
        run.log(f"pings: sustained with bounded lag up to {sustained}/s offered")

        # Correctness: every ping produced was seen once; the index holds every driver.
        produced = asyncio.run(end_offsets([loc_topic]))[loc_topic]
        stats = worker.stats()
        index_docs = asyncio.run(redis_count(f"{dep.redis_prefix}d:*"))
        correctness = {
            "pings_produced_total": produced,
            "pings_produced_since_restart": produced - base,
            "pings_seen_since_restart": pings_seen(stats),
            "outcomes_since_restart": stats.get("pings"),
            "dead_letters": stats.get("dead_letters"),
            "drivers_in_index": index_docs,
            "reconciled": pings_seen(stats) == produced - base and index_docs == s.city_drivers,
        }
        worker.stop()

        run.log("baselines: bare aiokafka loop, ConsumerPerformance, ProducerPerformance on the same broker")
        bl = run_baselines(run, dep, loc_topic, produced)
        run.results["pings"] = {
            "drivers": s.city_drivers,
            "drain": drain,
            "ramp": ramp,
            "sustained_offered_per_second": sustained,
            "baselines": bl,
            "correctness": correctness,
            "ratio_drain_to_aiokafka": round(drain["rate_window"] / bl["aiokafka"]["per_second"], 4),
            "ratio_drain_to_aiokafka_decode": round(drain["rate_window"] / bl["aiokafka_decode"]["per_second"], 4),
            "ratio_drain_to_consumer_perf": round(drain["rate_window"] / bl["consumer_perf"]["per_second"], 4),
        }
    finally:
        dep.cleanup()


def drain_backlog(run: Run, dep: Deployment, drivers: int, pings: int) -> tuple[dict[str, Any], WorkerProcess]:
    """Produces a backlog of `pings` from `drivers` while no worker runs, then starts one and measures
    how fast it drains it and at what CPU cost; returns the figures and the running worker."""
    run.log(f"pings: backlog of {pings} pings while the worker is stopped")
    backlog = dep.tool("bench.load", "pings", "--drivers", str(drivers), "--count", str(pings))
    worker = dep.start_worker("w1")
    worker.wait_ready()
    seen0 = 0  # a new process: its counters start at zero (it may have begun before it was ready)
    seen_ready, cpu0, t_cpu0 = pings_seen(worker.stats()), cpu_seconds(worker.pid), time.time()
    series = follow([worker], pings_seen, seen0 + pings, timeout=150, settle=index_settled)
    cpu_used = cpu_seconds(worker.pid) - cpu0
    drain_s = series[-1][0] - t_cpu0
    drain_rate = window_rate([(t, c - seen0) for t, c, *_ in series])
    run.log(f"pings: drained at {drain_rate or 0:.0f}/s (window), CPU {cpu_used / drain_s:.0%} of a core")
    return {
        "pings": pings,
        "producer": backlog,
        "rate_window": round(drain_rate, 1),
        "seconds": round(drain_s, 2),
        "worker_cpu_seconds": round(cpu_used, 2),
        "worker_cpu_share": round(cpu_used / drain_s, 3),
        "cpu_us_per_ping": round(1e6 * cpu_used / max(1, pings - seen_ready), 1),
        "series": [(round(t - t_cpu0, 2), c - seen0) for t, c, *_ in series],
    }, worker


async def measure_restart(dep: Deployment, start, tag: str) -> tuple[dict[str, Any], WorkerProcess]:
    """From process start: HTTP answering, a session read, the index rebuilt, and an assignment
    request (produced while the worker was down, as orders keep coming) answered."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from bench.load import request_records
    from schemas.codec import default_codec

    codec = default_codec()
    consumer = AIOKafkaConsumer(
        dep.names.responses,
        bootstrap_servers=BOOTSTRAP,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=20,
    )
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    await consumer.start()
    await producer.start()
    _, order, request = next(request_records(tag, 1, seed=5))
    topic = dep.names.requests(request.geoKey)  # this process has no GEODISPATCH_TOPIC_PREFIX of its own
    await producer.send_and_wait(topic, codec.encode(request), key=order.encode())
    worker = start()
    marks: dict[str, float] = {}

    async def answered() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                if any(r.key == order.encode() for r in records):
                    marks["assignment_answered_s"] = time.time() - worker.started_at
                    return

    async def http() -> None:
        while "session_answered_s" not in marks:
            if not worker.alive():
                raise RuntimeError(f"worker died:\n{worker.log_tail()}")
            try:
                status, body = await asyncio.to_thread(worker.get, "/driver-sessions/sessions/drv_1", timeout=2.0)
                marks.setdefault("http_up_s", time.time() - worker.started_at)
                if status == 200 and isinstance(body, dict) and body.get("last_loc"):
                    marks["session_answered_s"] = time.time() - worker.started_at
            except OSError:
                pass
            await asyncio.sleep(0.05)
        await asyncio.to_thread(worker.wait_ready, 120)
        marks["index_rebuilt_s"] = time.time() - worker.started_at

    try:
        await asyncio.wait_for(asyncio.gather(answered(), http()), timeout=180)
    finally:
        await consumer.stop()
        await producer.stop()
    import psutil

    marks = {k: round(v, 2) for k, v in marks.items()}
    marks["rss_mib"] = round(psutil.Process(worker.pid).memory_info().rss / 2**20, 1)
    marks["peak_rss_mib"] = round(peak_rss_mib(worker.pid) or 0, 1)
    return marks, worker


async def ping_ramp(run: Run, dep: Deployment, worker: WorkerProcess, loc_topic: str) -> dict[str, Any]:
    """Offered rates in steps, each for a few seconds from the load generator process; a step is
    sustained when the input lag at its end is under one second of input. Stops at the first step
    that is not."""
    s = run.sizes
    watcher = OffsetWatcher([loc_topic])
    await watcher.start()
    steps = []
    timeline = []
    first = 0
    t0 = time.time()
    ramp_produced0 = await watcher.total()
    ramp_seen0 = pings_seen(await asyncio.to_thread(worker.stats))
    try:
        for rate in s.ramp_rates:
            produced0 = await watcher.total()
            seen0 = pings_seen(await asyncio.to_thread(worker.stats))
            cpu0 = cpu_seconds(worker.pid)
            proc = dep.spawn(
                "bench.load",
                "pings",
                "--drivers",
                str(s.city_drivers),
                "--first",
                str(first % s.city_drivers),
                "--count",
                str(10**9),
                "--rate",
                str(rate),
                "--seconds",
                str(s.ramp_step_s),
                out=dep.workdir / f"ramp-{rate}.json",
            )
            started = time.time()
            lags = []
            while proc.poll() is None:
                await asyncio.sleep(0.5)
                produced = await watcher.total() - produced0
                seen = pings_seen(await asyncio.to_thread(worker.stats)) - seen0
                lags.append(produced - seen)
                timeline.append((round(time.time() - t0, 2), rate, produced - seen, seen))
            elapsed = time.time() - started
            first += int(rate * s.ramp_step_s)
            produced = await watcher.total() - produced0
            seen = pings_seen(await asyncio.to_thread(worker.stats)) - seen0
            gen = orjson.loads((dep.workdir / f"ramp-{rate}.json").read_bytes().splitlines()[-1])
            # Kept up: processed at least 95 % of the step's input, and under one second of input behind
            # at its end. The second alone let a worker 13 % short of the rate pass a 6 s step.
            bounded = seen >= 0.95 * produced and produced - seen <= max(1000, rate)
            steps.append(
                {
                    "offered": rate,
                    "generator_rate": gen["rate"],
                    "produced": produced,
                    "seen": seen,
                    "processed_per_second": round(seen / max(gen["seconds"], elapsed - 1.0), 1),
                    "lag_end": produced - seen,
                    "lag_max": max(lags, default=0),
                    "bounded": bounded,
                    "worker_cpu_share": round((cpu_seconds(worker.pid) - cpu0) / elapsed, 3),
                }
            )
            run.log(
                f"  ramp {rate}/s: processed {steps[-1]['processed_per_second']:.0f}/s, lag at end {produced - seen}"
            )
            if not bounded:
                break
        # Let the worker catch up before anything else is measured on this machine.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = await asyncio.to_thread(worker.stats)
            behind = (await watcher.total() - ramp_produced0) - (pings_seen(stats) - ramp_seen0)
            if behind <= 0 and index_settled(stats):
                break
            await asyncio.sleep(0.5)
    finally:
        await watcher.stop()
    return {"step_seconds": s.ramp_step_s, "steps": steps, "timeline": timeline}


def run_baselines(run: Run, dep: Deployment, loc_topic: str, produced: int) -> dict[str, Any]:
    raw = dep.tool("bench.baselines", "aiokafka", "--topic", loc_topic, "--expect", str(produced))
    decoded = dep.tool("bench.baselines", "aiokafka", "--topic", loc_topic, "--expect", str(produced), "--decode")
    consumer = baselines.consumer_performance(loc_topic, produced, f"{dep.prefix}consumer-perf")
    payload = dep.workdir / "ping-payloads.txt"
    pings = [
        orjson.dumps(m.model_dump(mode="json", exclude_none=True)).decode()
        for _, _, m in ping_records(0, 1000, 1000, wall_clock=True)
    ]
    payload.write_text("\n".join(pings))
    topic = f"{dep.prefix}baseline"
    asyncio.run(create_topic(topic, dep.partitions))
    producer = baselines.producer_performance(topic, run.sizes.baseline_producer_records, payload)
    for name, result in (
        ("aiokafka", raw),
        ("aiokafka+decode", decoded),
        ("ConsumerPerformance", consumer),
        ("ProducerPerformance", producer),
    ):
        run.log(f"  {name}: {result['per_second']:.0f} records/s")
    return {
        "aiokafka": raw,
        "aiokafka_decode": decoded,
        "consumer_perf": consumer,
        "producer_perf": producer,
        "records": produced,
        "payload_bytes_mean": round(sum(map(len, pings)) / len(pings), 1),
    }


async def create_topic(name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


# -- 4: one worker against two on the same backlog ----------------------------------------------


# Workers of the scale scenario, each count draining the same backlog in its own consumer group.
SCALE_WORKERS = (1, 2, 4)
SCALE_PARTITIONS = 8


def scale(run: Run) -> None:
    """The same ping backlog drained by one, two and four workers of one group on 8 partitions, each
    count on topics of its own; and the model that predicts the counts above one from the one-worker
    run: a worker's rate times the workers, until the CPU that one ping costs the whole machine (the
    workers, the broker and Redis) uses every core (docs/SCALING.md).

    What is measured is a formed group draining, not its forming: the workers start on empty topics,
    and once the group holds every partition with no rebalance under way they are paused (SIGSTOP)
    while the backlog is written, and resumed together. Workers that join one by one instead rebalance
    the group once per join, and each rebalance makes the new owners restore their tables and rewrite
    their partitions' part of the index: a cost of the joins (docs/SCALING.md), which in a drain of a
    few seconds outweighed the pings."""
    s = run.sizes
    cores = psutil.cpu_count() or 1
    result: dict[str, Any] = {"pings": s.scale_pings, "drivers": s.scale_drivers, "partitions": SCALE_PARTITIONS,
                              "cores": cores}
    run.log(f"scale: {s.scale_pings} pings from {s.scale_drivers} drivers, {SCALE_PARTITIONS} partitions")
    for n in SCALE_WORKERS:
        dep = run.deployment(f"s{n}", partitions=SCALE_PARTITIONS)
        dep.apply_topics()
        try:
            broker, redis_server = listener_pid(dep.bootstrap.split(",")[0]), listener_pid(_redis_address(dep))
            servers = {"broker": broker, "redis": redis_server}
            result["servers_measured"] = [name for name, pid in servers.items() if pid]
            # The workers sleep through the backlog's writing: a session timeout longer than it takes.
            workers = [dep.start_worker(f"w{i}", GEODISPATCH_KAFKA_SESSION_TIMEOUT_S="90") for i in range(n)]
            _wait_formed(workers, SCALE_PARTITIONS)
            memory0 = _redis_memory(dep)
            for worker in workers:
                worker.process.send_signal(signal.SIGSTOP)
            try:
                dep.tool("bench.load", "pings", "--drivers", str(s.scale_drivers), "--count", str(s.scale_pings))
                cpu0 = _cpu(workers, servers)
            finally:
                for worker in workers:
                    worker.process.send_signal(signal.SIGCONT)
            # From the resume to 95 % of the backlog: the rate, and the CPU every process of the machine
            # spent on those pings.
            series = follow(workers, pings_seen, int(0.95 * s.scale_pings), timeout=300)
            cpu1 = _cpu(workers, servers)
            resumed, end = series[0], series[-1]
            rate = end[1] / (end[0] - resumed[0]) if end[0] > resumed[0] else None
            follow(workers, pings_seen, s.scale_pings, timeout=300, settle=index_settled)
            done = end[1]
            per_ping = {part: round((cpu1[part] - cpu0[part]) / done * 1e6, 2) for part in cpu0} if done else {}
            result[f"workers_{n}"] = {
                "rate": round(rate, 1) if rate else None,
                "cpu_us_per_ping": round(sum(per_ping.values()), 1) if per_ping else None,
                "cpu_us_per_ping_by_process": per_ping,
                "per_worker": list(series[-1][2:]),
                "series": [(round(p[0] - resumed[0], 2), p[1]) for p in series],
            }
            if n == 1:
                result["redis_bytes_per_driver"] = round((_redis_memory(dep) - memory0) / s.scale_drivers)
            run.log(f"scale: {n} worker(s): {rate or 0:.0f} pings/s")
        finally:
            dep.cleanup()
    one = result["workers_1"]
    for n in SCALE_WORKERS:
        rate = result[f"workers_{n}"]["rate"]
        predicted = predicted_rate(one["rate"], one["cpu_us_per_ping"], n, cores)
        result[f"workers_{n}"]["predicted"] = round(predicted, 1) if predicted else None
        ratio = round(rate / predicted, 3) if rate and predicted else None
        result[f"workers_{n}"]["measured_over_predicted"] = ratio
    r1, r2, r4 = (result[f"workers_{n}"]["rate"] for n in SCALE_WORKERS)
    result["ratio"] = round(r2 / r1, 3) if r1 and r2 else None
    result["ratio_four_two"] = round(r4 / r2, 3) if r2 and r4 else None
    run.results["scale"] = result


def _wait_formed(workers: list[WorkerProcess], partitions: int, timeout: float = 180.0, steady_s: float = 3.0) -> None:
    """Until the workers' group holds every partition of the statuses topic (which the pings follow),
    each worker some, none rebalancing, for `steady_s` on end."""
    deadline, since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        held: list[list[str]] = []
        for worker in workers:
            try:
                stats = worker.stats()
            except (OSError, RuntimeError, ValueError):
                stats = None
            if not stats or not stats["ready"] or stats["partitions"]["rebalancing"]:
                held = []
                break
            assigned = stats["partitions"]["assigned"]
            held.append([tp for tp in assigned if tp.rsplit(":", 1)[0].endswith("driver_status")])
        formed = len(held) == len(workers) and all(held) and sum(map(len, held)) == partitions
        since = (since or time.monotonic()) if formed else None
        if since is not None and time.monotonic() - since >= steady_s:
            return
        for worker in workers:
            if not worker.alive():
                raise RuntimeError(f"worker {worker.name} died:\n{worker.log_tail()}")
        time.sleep(0.25)
    raise TimeoutError(f"the group of {len(workers)} did not settle on {partitions} partitions within {timeout}s")


def predicted_rate(one_rate: float | None, cpu_us_per_ping: float | None, workers: int, cores: int) -> float | None:
    """The scale model: each worker adds one worker's rate until the machine's cores are spent, at the
    CPU per ping of the whole machine measured with one worker."""
    if not one_rate or not cpu_us_per_ping:
        return None
    return min(workers * one_rate, cores / (cpu_us_per_ping / 1e6))


def _cpu(workers: list[WorkerProcess], servers: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds so far of the workers together and of each server found."""
    return {"workers": sum(cpu_seconds(w.pid) for w in workers),
            **{name: cpu_seconds(pid) for name, pid in servers.items() if pid}}


def _redis_memory(dep: Deployment) -> int:
    """Bytes Redis uses for data (INFO memory, used_memory)."""
    client = dep.redis()
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def _redis_address(dep: Deployment) -> str:
    return dep.redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]


# -- 2, 5, 6: a city of 10,000 available drivers: sessions API, requests, mixed ------------------


# The processes of a deployment's shape (`geodispatch run --shape`), by their roles (None: the
# worker's default, every role, which an earlier commit's worker in bench.pairs runs too); the stream
# processors only where the sessions API is not measured.
ONE_PROCESS: tuple[str | None, ...] = (None,)
BY_ROLE: tuple[str | None, ...] = ("sessions", "assignments")


def assignment_city(run: Run, tag: str, drivers: int | None = None,
                    shape: tuple[str | None, ...] = BY_ROLE) -> tuple[Deployment, list[WorkerProcess]]:
    """A deployment of `shape` with a city of available drivers (the sizes' `assign_drivers` unless
    given) loaded into state and index; its processes in the order of `shape`, the first of them
    with the sessions role."""
    drivers = drivers or run.sizes.assign_drivers
    dep = run.deployment(tag)
    dep.apply_topics()
    dep.tool("bench.load", "city", "--drivers", str(drivers))
    # As `make run` starts them (streams.processes): the sessions process gives way to the others.
    workers = [dep.start_worker(f"w{n}", roles=roles, GEODISPATCH_NICENESS=str(niceness(roles or "")))
               for n, roles in enumerate(shape, start=1)]
    for worker in workers:
        worker.wait_ready()
    follow(workers[:1], sessions_seen, 2 * drivers, timeout=400, settle=index_settled)
    run.log(f"city: {drivers} available drivers loaded, processes {' | '.join(r or 'every role' for r in shape)}")
    return dep, workers


def in_own_city(run: Run, tag: str, measure, drivers: int | None = None,
                shape: tuple[str | None, ...] = BY_ROLE) -> Any:
    """`measure(dep, workers)` on a city of its own, so that a backlog left by an earlier scenario
    cannot delay its answers."""
    dep, workers = assignment_city(run, tag, drivers, shape)
    try:
        return measure(dep, workers)
    finally:
        dep.cleanup()


def mixed_scenario(run: Run) -> None:
    """The seed's load under `make run`'s shape (a process per role), and in one process of every role."""
    run.results["mixed"] = in_own_city(run, "m", lambda dep, workers: mixed(run, dep, workers[0]))
    run.results["mixed_one_process"] = in_own_city(run, "m1", lambda dep, workers: mixed(run, dep, workers[0]),
                                                   shape=ONE_PROCESS)


def fleet_scenario(run: Run) -> None:
    """The mixed load on a fleet of 50,000 drivers pinging every 5 s, with a trickle of orders."""
    s = run.sizes
    load = MixedLoad(s.fleet_drivers, s.fleet_ping_rate, s.fleet_request_rate, s.mixed_seconds)
    run.results["fleet"] = in_own_city(run, "f", lambda dep, workers: mixed(run, dep, workers[0], load),
                                       s.fleet_drivers)


def city_of_10k(run: Run) -> None:
    """A process per role: the sessions API closed loop (today's figure) and open loop, then requests
    answered by one assignments process, then by two."""
    s = run.sizes
    dep, (sessions, assignments) = assignment_city(run, "a")
    try:
        server = dep.start_worker("api", roles="api")
        server.wait_answering()
        api = {}
        for route in ("nearby", "session"):
            api[route] = dep.tool("bench.httpload", "--port", str(server.port), "--route", route, "--clients", "50",
                                  "--seconds", str(s.api_seconds), "--drivers", str(s.assign_drivers))
            run.log(f"api: {route}: {api[route]['per_second']:.0f}/s, latency ms {api[route]['latency_ms']}")
        api["drivers"] = s.assign_drivers
        api["open_loop"] = open_loop_api(run, dep, server)
        api["server_side"] = server_side_http(server)
        run.results["api"] = api
        server.stop()

        run.results["requests"] = requests_only(run, dep, [assignments], "s5")
        second = dep.start_worker("w3", roles="assignments")
        for worker in (assignments, second):
            worker.wait_ready()
        time.sleep(2)  # the first process's new assignment settles too
        two = requests_only(run, dep, [assignments, second], "s5b")
        one_rate = run.results["requests"]["rate_window"]
        two["ratio_to_one"] = round(two["rate_window"] / one_rate, 2) if one_rate else None
        run.results["requests_two"] = two
        run.log(f"requests: two assignments processes / one = {two['ratio_to_one']}")
    finally:
        dep.cleanup()


def open_loop_api(run: Run, dep: Deployment, server: WorkerProcess) -> dict[str, dict[str, Any]]:
    """The sessions API process driven at fixed rates: results by "<route>@<rate>"."""
    s = run.sizes
    found = {}
    for route in ("nearby", "session"):
        for rate in s.api_open_rates:
            r = dep.tool("bench.httpload", "--port", str(server.port), "--route", route, "--rate", str(rate),
                         "--clients", "256", "--seconds", str(s.api_seconds), "--drivers", str(s.assign_drivers))
            found[f"{route}@{rate}"] = r
            run.log(f"api process, open loop: {route} at {rate}/s: {r['per_second']:.0f}/s answered, "
                    f"latency ms {r['latency_ms']}")
    return found


def server_side_http(worker: WorkerProcess) -> dict[str, Any]:
    """The worker's own histogram of request handling time, as cumulative shares per bucket."""
    status, text = worker.get("/metrics")
    buckets: dict[str, dict[str, float]] = {}
    if isinstance(text, str):
        for line in text.splitlines():
            if line.startswith("geodispatch_http_request_seconds_bucket"):
                labels, value = line.rsplit(" ", 1)
                route = labels.split('route="')[1].split('"')[0]
                le = labels.split('le="')[1].split('"')[0]
                buckets.setdefault(route, {})[le] = float(value)
    shares = {}
    for route, b in buckets.items():
        total = b.get("+Inf") or 1
        shares[route] = {le: round(v / total, 4) for le, v in b.items()}
    return shares


def collect_answers(dep: Deployment, tag: str, count: int, timeout: float) -> Any:
    out = dep.workdir / f"answers-{tag}.jsonl"
    proc = dep.spawn(
        "bench.load",
        "collect",
        "--tag",
        tag,
        "--count",
        str(count),
        "--timeout",
        str(timeout),
        "--out",
        str(out),
        out=dep.workdir / f"collect-{tag}.json",
    )
    time.sleep(1.5)  # the collector's consumer is assigned before the first request goes out
    return proc, out


def answers_report(dep: Deployment, tag: str, sent_log: Path, answers: Path) -> dict[str, Any]:
    sent = dict(orjson.loads(line) for line in sent_log.read_bytes().splitlines() if line)
    rows = [orjson.loads(line) for line in answers.read_bytes().splitlines() if line]
    per_order = Counter(r["orderId"] for r in rows)
    assigned = [r for r in rows if r["status"] == "assigned"]
    drivers = Counter(r["driverId"] for r in assigned)
    latencies = [(r["arrived"] - sent[r["orderId"]]) * 1000 for r in rows if r["orderId"] in sent]
    # Until the worker's producer took the answer (its record's timestamp): the rest of the latency is
    # the delivery to the collector, on the same shared cores.
    produced = [r["kafka_ts"] - sent[r["orderId"]] * 1000 for r in rows if r["orderId"] in sent]
    arrivals = sorted(r["arrived"] for r in rows)
    failures = Counter(r["error"] for r in rows if r["status"] == "failed")
    holders = asyncio.run(reservation_holders(dep, [(r["driverId"], r["orderId"]) for r in assigned]))
    return {
        "sent": len(sent),
        "answers": len(rows),
        "answered_orders": len(per_order),
        "unanswered": len(set(sent) - set(per_order)),
        "answered_twice_or_more": sum(1 for n in per_order.values() if n > 1),
        "assigned": len(assigned),
        "failed": dict(failures),
        "drivers_assigned_twice": sum(1 for n in drivers.values() if n > 1),
        "reservations_match": holders,
        "exactly_once": len(per_order) == len(sent) and all(n == 1 for n in per_order.values()),
        "never_twice": all(n == 1 for n in per_order.values()),
        # Unanswered requests count as infinitely late: a percentile past them is not reached.
        "latency_ms_all_sent": summarize(latencies + [float("inf")] * len(set(sent) - set(per_order)), 2),
        "no_double_assignment": all(n == 1 for n in drivers.values()) and holders["mismatched"] == 0,
        "latency_ms": summarize(latencies, 2),
        "until_produced_ms": summarize(produced, 2),
        "first_sent": min(sent.values()) if sent else None,
        "last_arrival": arrivals[-1] if arrivals else None,
        "arrivals": arrivals,
        "latencies": [round(x, 2) for x in latencies],
        "eta_mean_min": round(sum(r["eta"] or 0 for r in assigned) / len(assigned), 1) if assigned else None,
    }


async def reservation_holders(dep: Deployment, pairs: list[tuple[str, str]]) -> dict[str, int]:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        pipe = redis.pipeline(transaction=False)
        for driver, _ in pairs:
            pipe.get(dep.redis_keys.reservation(driver))
        held = await pipe.execute() if pairs else []
    finally:
        await redis.aclose()
    mismatched = sum(1 for (_, order), holder in zip(pairs, held, strict=True) if holder != order)
    return {"checked": len(pairs), "mismatched": mismatched}


def requests_only(run: Run, dep: Deployment, workers: list[WorkerProcess], step: str) -> dict[str, Any]:
    """A burst of requests answered by `workers` (the profile is the first's)."""
    s = run.sizes
    tag = f"{run.run_id}-{step}"
    proc, answers = collect_answers(dep, tag, s.requests, timeout=s.requests_bound_s)
    sent_log = dep.workdir / f"sent-{tag}.jsonl"
    cpu0, redis_cpu0 = sum(cpu_seconds(w.pid) for w in workers), redis_cpu_seconds(dep.redis_url)
    gen = dep.tool("bench.load", "requests", "--count", str(s.requests), "--tag", tag, "--sent-log", str(sent_log))
    from bench.profile import fold, spy

    raw = dep.workdir / f"requests-{step}.profile.raw.txt"
    sampling = spy(workers[0].pid, min(10, s.requests_bound_s / 3), raw)
    proc.wait(s.requests_bound_s + 30)
    sampling.wait(30)
    redis_cpu = redis_cpu_seconds(dep.redis_url) - redis_cpu0
    report = answers_report(dep, tag, sent_log, answers)
    arrivals = report.pop("arrivals")
    elapsed = (report["last_arrival"] - report["first_sent"]) if arrivals else None
    series = [(a - report["first_sent"], i + 1) for i, a in enumerate(arrivals)]
    report.update(
        producer=gen,
        # Redis serves every process of a deployment from one thread: its time per request bounds
        # what all of them together can answer.
        redis_cpu_ms_per_request=round(1000 * redis_cpu / max(1, len(arrivals)), 3),
        rate_overall=round(len(arrivals) / elapsed, 1) if elapsed else None,
        rate_window=round(window_rate(series) or 0, 1),
        processes=len(workers),
        worker_cpu_seconds=round(sum(cpu_seconds(w.pid) for w in workers) - cpu0, 2),
        drivers=s.assign_drivers,
        series=[(round(t, 3), n) for t, n in series[:: max(1, len(series) // 400)]],
    )
    report.pop("latencies")
    if raw.exists():
        report["profile"] = fold(raw)
    run.log(
        f"requests ({len(workers)} process(es)): {report['rate_window']:.0f}/s answered; "
        f"exactly once {report['exactly_once']}, no double assignment {report['no_double_assignment']}"
    )
    return report


@dataclass(frozen=True)
class MixedLoad:
    drivers: int
    ping_rate: int
    request_rate: int
    seconds: float


def mixed(run: Run, dep: Deployment, worker: WorkerProcess, load: MixedLoad | None = None) -> dict[str, Any]:
    """Pings and requests at once (the sizes' mixed load unless given): answers' latency, exactly once,
    and how far pings fell behind."""
    s = run.sizes
    load = load or MixedLoad(s.assign_drivers, s.mixed_ping_rate, s.mixed_request_rate, s.mixed_seconds)
    tag = f"{dep.prefix.rstrip('.')}-s6"  # the deployment's own: each shape keeps its files
    expected = int(load.request_rate * load.seconds)
    proc, answers = collect_answers(dep, tag, expected, timeout=load.seconds + s.mixed_grace_s)
    sent_log = dep.workdir / f"sent-{tag}.jsonl"
    loc_topic = dep.names.locations("4_-7")
    base = asyncio.run(end_offsets([loc_topic]))[loc_topic]
    seen0 = pings_seen(worker.stats())
    gen_out = dep.workdir / f"mixed-{tag}.json"
    gen = dep.spawn(
        "bench.load",
        "mixed",
        "--drivers",
        str(load.drivers),
        "--ping-rate",
        str(load.ping_rate),
        "--request-rate",
        str(load.request_rate),
        "--seconds",
        str(load.seconds),
        "--tag",
        tag,
        "--sent-log",
        str(sent_log),
        out=gen_out,
    )
    lags = []
    started = time.time()
    while gen.poll() is None:
        time.sleep(0.5)
        produced = asyncio.run(end_offsets([loc_topic]))[loc_topic] - base
        lags.append((round(time.time() - started, 2), produced - (pings_seen(worker.stats()) - seen0)))
    proc.wait(load.seconds + s.mixed_grace_s + 30)
    generator = orjson.loads(gen_out.read_bytes().splitlines()[-1])
    report = answers_report(dep, tag, sent_log, answers)
    report.pop("arrivals")
    latencies = report.pop("latencies")
    # The first pass over the fleet (each driver's first ping since the city was loaded) costs more
    # than the pings after it; requests sent once every driver pinged once see the steady state.
    first_pass_s = load.drivers / load.ping_rate
    sent = dict(orjson.loads(line) for line in sent_log.read_bytes().splitlines() if line)
    arrived = {r["orderId"]: r["arrived"] for r in map(orjson.loads, answers.read_bytes().splitlines()) if r}
    start = min(sent.values(), default=0)
    steady = [(arrived[o] - at) * 1000 if o in arrived else float("inf")
              for o, at in sent.items() if at - start >= first_pass_s]
    report.update(
        generator=generator,
        first_pass_s=first_pass_s,
        latency_ms_after_first_pass=summarize(steady, 2),
        ping_lag=lags,
        drivers=load.drivers,
        ping_rate=load.ping_rate,
        request_rate=load.request_rate,
        seconds=load.seconds,
        latencies_sample=latencies[:: max(1, len(latencies) // 2000)],
    )
    run.log(f"mixed ({load.drivers} drivers): latency ms {report['latency_ms']}; exactly once {report['exactly_once']}")
    return report


def isolation_scenario(run: Run) -> None:
    """Requests at a steady rate from the moment a backlog of pings waits: for the sessions process of
    `make run`'s shape, and for one process of every role (requests before pings within it)."""
    run.results["isolation"] = in_own_city(run, "i", lambda dep, workers: isolation(run, dep, workers[0]))
    run.results["isolation_one_process"] = in_own_city(
        run, "i1", lambda dep, workers: isolation(run, dep, workers[0]), shape=ONE_PROCESS)


def isolation(run: Run, dep: Deployment, worker: WorkerProcess) -> dict[str, Any]:
    """`worker` has the sessions role. The backlog is produced while it is paused (SIGSTOP: one
    generator sends slower than a worker drains, so no backlog would build otherwise), and the requests
    start as it resumes. The answers' latency is reported for the requests sent before the backlog was
    drained, and for all."""
    s = run.sizes
    tag = f"{dep.prefix.rstrip('.')}-s7"
    expected = int(s.isolation_request_rate * s.isolation_seconds)
    proc, answers = collect_answers(dep, tag, expected, timeout=s.isolation_seconds + s.mixed_grace_s)
    sent_log = dep.workdir / f"sent-{tag}.jsonl"
    seen0 = pings_seen(worker.stats())
    worker.process.send_signal(signal.SIGSTOP)
    try:
        backlog = dep.tool("bench.load", "pings", "--drivers", str(s.assign_drivers), "--count",
                           str(s.isolation_backlog))
    finally:
        worker.process.send_signal(signal.SIGCONT)
    resumed = time.time()
    gen = dep.spawn("bench.load", "requests", "--count", str(expected), "--rate", str(s.isolation_request_rate),
                    "--tag", tag, "--sent-log", str(sent_log), out=dep.workdir / f"isolation-{tag}.json")
    series = follow([worker], pings_seen, seen0 + s.isolation_backlog, timeout=120)
    drained_s = series[-1][0] - resumed
    gen.wait(s.isolation_seconds + 60)
    proc.wait(s.isolation_seconds + s.mixed_grace_s + 30)
    report = answers_report(dep, tag, sent_log, answers)
    for key in ("arrivals", "latencies"):
        report.pop(key)
    sent = dict(orjson.loads(line) for line in sent_log.read_bytes().splitlines() if line)
    arrived = {r["orderId"]: r["arrived"] for r in map(orjson.loads, answers.read_bytes().splitlines()) if r}
    during = [order for order, at in sent.items() if at - resumed <= drained_s]
    # Unanswered requests count as infinitely late here too.
    report.update(
        backlog=backlog,
        backlog_drained_s=round(drained_s, 2),
        during_backlog=len(during),
        latency_ms_during_backlog=summarize(
            [(arrived[o] - sent[o]) * 1000 if o in arrived else float("inf") for o in during], 2),
        request_rate=s.isolation_request_rate,
        ping_series=[(round(t - resumed, 2), c - seen0) for t, c, *_ in series],
        # (seconds after the resume it was sent, latency ms or None when unanswered) per request
        requests_series=[(round(at - resumed, 3), round((arrived[o] - at) * 1000, 2) if o in arrived else None)
                         for o, at in sorted(sent.items(), key=lambda item: item[1])],
    )
    run.log(f"isolation: backlog of {s.isolation_backlog} pings drained in {drained_s:.1f} s; requests sent meanwhile "
            f"{len(during)}, latency ms {report['latency_ms_during_backlog']}; all {report['latency_ms']}")
    return report


def _profile(run: Run) -> None:
    from bench.profile import profile

    profile(run)


def _gateway(run: Run) -> None:
    from bench.gateway import gateway

    gateway(run)


ALL = {
    "pings": pings_and_restart,
    "scale": scale,
    "city": city_of_10k,
    "mixed": mixed_scenario,
    "fleet": fleet_scenario,
    "isolation": isolation_scenario,
    "profile": _profile,
    "gateway": _gateway,
}
