"""Fault scenarios: run mixed load against real workers, inject a fault, drain, then read every
input, output, dead letter, Redis reservation and session, and reconcile them with the checker."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass

import redis

from infra.topics import TopicNames
from tests.faults.checker import (
    History,
    Report,
    TripEnd,
    answer_from_record,
    check,
    dead_letter_from_record,
    request_from_record,
)
from tests.faults.load import Load
from tests.integration.harness import REDIS_URL, Deployment, WorkerProcess

FULL = os.environ.get("GEODISPATCH_FAULTS_FULL") == "1"
READ_ALL = 10**9


@dataclass
class Outcome:
    name: str
    report: Report
    recovery_s: float
    load: Load

    reasons: dict[str, int] | None = None

    def table(self) -> str:
        figures = dict(self.report.figures())
        for reason, count in (self.reasons or {}).items():
            figures[f"  dead letters: {reason}"] = count
        figures["pings sent"] = self.load.pings_sent
        figures["time to recover (s)"] = round(self.recovery_s, 1)
        width = max(len(k) for k in figures)
        rows = "\n".join(f"  {k:<{width}}  {v:>8}" for k, v in figures.items())
        return f"{self.name}\n{rows}"


def fault_env(dep: Deployment) -> None:
    """Short group timeouts so a dead worker's partitions move on quickly; heartbeat checks off."""
    dep.partitions = 4
    dep.extra_env.update(
        GEODISPATCH_KAFKA_SESSION_TIMEOUT_S="6",
        GEODISPATCH_MISSED_HEARTBEATS="100000",
        GEODISPATCH_LOCATION_MAX_AGE_S="600",
    )


def answered(dep: Deployment, orders: list[str], timeout: float) -> float:
    """Waits until every order has an answer or a dead letter; returns how long that took."""
    started = time.monotonic()
    wanted = set(orders)
    while time.monotonic() - started < timeout:
        seen = {json.loads(r.value)["orderId"] for r in dep.read(dep.names.responses, READ_ALL, timeout=3)}
        seen |= {r.key.decode() for r in dep.read(dep.names.dlq, READ_ALL, timeout=1) if r.key}
        if wanted <= seen:
            return time.monotonic() - started
    return time.monotonic() - started


def history(dep: Deployment, load: Load, worker: WorkerProcess, regions: tuple[str, ...]) -> History:
    names: TopicNames = dep.names
    requests = [
        request_from_record(r.topic, r.partition, r.offset, r.key, r.value)
        for region in regions
        for r in dep.read(names.requests(region), READ_ALL, timeout=3)
        if not any(h[0] == "geodispatch.rerouted_from" for h in r.headers or ())
    ]
    answers = [answer_from_record(r.partition, r.offset, r.value, r.timestamp)
               for r in dep.read(names.responses, READ_ALL, timeout=3)]
    letters = [dead_letter_from_record(r.key, r.headers) for r in dep.read(names.dlq, READ_ALL, timeout=2)]
    trip_ends = []
    for record in dep.read(names.trip_events, READ_ALL, timeout=2):
        event = json.loads(record.value)
        trip_ends.append(TripEnd(event["orderId"], event["driverId"], record.timestamp))
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = dep.redis_prefix
    reservations = {key[len(prefix) + 2:]: client.get(key) for key in client.scan_iter(f"{prefix}r:*", count=1000)}
    decisions = {}
    for key in client.scan_iter(f"{prefix}o:*", count=1000):
        raw = client.get(key)
        if raw:
            decisions[key[len(prefix) + 2:]] = json.loads(raw).get("driverId")
    sessions = {driver: worker.get(f"/driver-sessions/sessions/{driver}")[1] for driver in load.last_pings}
    return History(requests=requests, answers=answers, dead_letters=letters, trip_ends=trip_ends,
                   reservations={d: o for d, o in reservations.items() if o},
                   decisions=decisions, sessions=sessions, last_pings=dict(load.last_pings))


def dead_letter_reasons(dep: Deployment) -> dict[str, int]:
    from schemas import dead_letter as dl

    reasons: dict[str, int] = {}
    for record in dep.read(dep.names.dlq, READ_ALL, timeout=2):
        headers = dl.header_dict(record.headers)
        reason = f"{headers.get(dl.STAGE)} {headers.get(dl.ERROR_CLASS)}: {headers.get(dl.ERROR_MESSAGE, '')[:60]}"
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def settle(dep: Deployment, load: Load, worker: WorkerProcess, timeout: float = 90) -> float:
    """After the load stops: every order answered, every trip end applied."""
    took = answered(dep, load.orders, timeout)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = worker.get("/stats")[1]
        if isinstance(stats, dict) and stats["index"]["pending_writes"] == 0:
            break
        time.sleep(0.5)
    time.sleep(3)  # trip ends and last pings still in flight through the sessions agent
    return took


def worker_kill(dep: Deployment, duration_s: float, kill_every_s: float) -> Outcome:
    fault_env(dep)
    workers = {name: dep.start_worker(name) for name in ("a", "b")}
    for worker in workers.values():
        worker.wait_ready(90)
    load = Load(dep.names)
    load.start()
    started = time.monotonic()
    victim = "a"
    kills = 0
    next_kill = started + kill_every_s
    while time.monotonic() - started < duration_s:
        if time.monotonic() >= next_kill:
            workers[victim].kill()
            kills += 1
            workers[victim] = dep.start_worker(victim)
            victim = "b" if victim == "a" else "a"
            next_kill += kill_every_s
        time.sleep(0.2)
    load.stop()
    survivor = workers["b" if victim == "a" else "a"]
    for worker in workers.values():
        worker.wait_ready(90)
    took = settle(dep, load, survivor)
    report = check(history(dep, load, survivor, dep.regions))
    return Outcome(f"worker kill (SIGKILL x{kills}, every {kill_every_s:.0f}s, {duration_s:.0f}s of load)",
                   report, took, load, dead_letter_reasons(dep))


def zombie(dep: Deployment, duration_s: float, pause_s: float) -> Outcome:
    fault_env(dep)
    workers = {name: dep.start_worker(name) for name in ("a", "b")}
    for worker in workers.values():
        worker.wait_ready(90)
    load = Load(dep.names, seed=11)
    load.start()
    time.sleep(duration_s / 3)
    zombie_worker = workers["a"]
    zombie_worker.process.send_signal(signal.SIGSTOP)
    time.sleep(pause_s)  # past the session timeout: the group hands its partitions to b
    zombie_worker.process.send_signal(signal.SIGCONT)
    time.sleep(max(0.0, duration_s * 2 / 3 - pause_s))
    load.stop()
    for worker in workers.values():
        worker.wait_ready(90)
    took = settle(dep, load, workers["b"])
    report = check(history(dep, load, workers["b"], dep.regions))
    return Outcome(f"zombie worker (SIGSTOP {pause_s:.0f}s past a 6s session timeout)", report, took, load,
                   dead_letter_reasons(dep))
