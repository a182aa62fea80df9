"""Fault scenarios: run mixed load against real workers, inject a fault, drain, then read every
input, output, dead letter, Redis reservation and session, and reconcile them with the checker."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import redis

from infra.percentiles import percentiles
from infra.redis_keys import RedisKeys
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
from tests.faults.servers import Broker, Cluster, RedisServer
from tests.integration.harness import Deployment, WorkerProcess

FULL = os.environ.get("GEODISPATCH_FAULTS_FULL") == "1"


@dataclass
class Outcome:
    name: str
    report: Report
    recovery_s: float
    load: Load

    reasons: dict[str, int] | None = None
    # Scenario-specific figures (stall, outage, restarts), printed after the common ones.
    extra: dict[str, object] | None = None

    def figures(self) -> dict[str, object]:
        figures: dict[str, object] = dict(self.report.figures())
        figures["pings sent"] = self.load.pings_sent
        figures["load sends failed"] = self.load.send_failures
        figures["time to recover (s)"] = round(self.recovery_s, 1)
        figures.update(self.extra or {})
        return figures

    def table(self) -> str:
        figures: dict[str, object] = dict(self.report.figures())
        for reason, count in (self.reasons or {}).items():
            figures[f"  dead letters: {reason}"] = count
        figures["pings sent"] = self.load.pings_sent
        figures["load sends failed"] = self.load.send_failures
        figures["time to recover (s)"] = round(self.recovery_s, 1)
        figures.update(self.extra or {})
        width = max(len(k) for k in figures)
        rows = "\n".join(f"  {k:<{width}}  {v:>8}" for k, v in figures.items())
        return f"{self.name}\n{rows}"


# Every outcome of this session, for the summary table printed at the end of the run.
RESULTS: list[Outcome] = []


def summary() -> str:
    """One table: a row per figure, a column per scenario run (its name up to the parenthesis)."""
    columns = [(o.name.split(" (")[0], o.figures()) for o in RESULTS]
    rows: list[str] = []
    for figures in (f for _, f in columns):
        rows.extend(k for k in figures if k not in rows)
    width = max(len(r) for r in rows)
    heads = [max(len(name), 8) for name, _ in columns]
    lines = ["  ".join([" " * width, *(name.rjust(w) for (name, _), w in zip(columns, heads, strict=True))])]
    for row in rows:
        cells = [str(f.get(row, "")).rjust(w) for (_, f), w in zip(columns, heads, strict=True)]
        lines.append("  ".join([row.ljust(width), *cells]))
    return "\n".join(lines)


def fault_env(dep: Deployment) -> None:
    """Short group timeouts so a dead worker's partitions move on quickly; heartbeat checks off. A
    store more than a few changelog records behind is caught up in bulk (streams/restore.py), so the
    faults meet that path (a production cold start's) and not only faust's recovery."""
    dep.partitions = 4
    dep.extra_env.update(
        GEODISPATCH_BULK_RESTORE_MIN_RECORDS="20",
        GEODISPATCH_KAFKA_SESSION_TIMEOUT_S="6",
        GEODISPATCH_MISSED_HEARTBEATS="100000",
        GEODISPATCH_LOCATION_MAX_AGE_S="600",
    )


def answered(dep: Deployment, orders: list[str], timeout: float) -> float:
    """Waits until every order has an answer or a dead letter; returns how long that took."""
    started = time.monotonic()
    wanted = set(orders)
    while time.monotonic() - started < timeout:
        seen = {json.loads(r.value)["orderId"] for r in dep.read_all(dep.names.responses)}
        seen |= {r.key.decode() for r in dep.read_all(dep.names.dlq) if r.key}
        if wanted <= seen:
            return time.monotonic() - started
        time.sleep(1)
    return time.monotonic() - started


def history(dep: Deployment, load: Load, worker: WorkerProcess, regions: tuple[str, ...],
            decisions_since_ms: int | None = None) -> History:
    names: TopicNames = dep.names
    requests = [
        request_from_record(r.topic, r.partition, r.offset, r.key, r.value)
        for region in regions
        for r in dep.read_all(names.requests(region))
        if not any(h[0] == "geodispatch.rerouted_from" for h in r.headers or ())
    ]
    answers = [answer_from_record(r.partition, r.offset, r.value, r.timestamp)
               for r in dep.read_all(names.responses)]
    letters = [dead_letter_from_record(r.key, r.headers) for r in dep.read_all(names.dlq)]
    trip_ends = []
    for record in dep.read_all(names.trip_events):
        event = json.loads(record.value)
        trip_ends.append(TripEnd(event["orderId"], event["driverId"], record.timestamp))
    client = dep.redis()
    prefix = dep.redis_prefix
    reservations = {RedisKeys.named(key): client.get(key) for key in client.scan_iter(f"{prefix}r:*", count=1000)}
    decisions = {}
    for key in client.scan_iter(f"{prefix}o:*", count=1000):
        raw = client.get(key)
        if raw:
            decisions[RedisKeys.named(key)] = json.loads(raw).get("driverId")
    sessions = {driver: worker.get(f"/driver-sessions/sessions/{driver}")[1] for driver in load.last_pings}
    return History(requests=requests, answers=answers, dead_letters=letters, trip_ends=trip_ends,
                   reservations={d: o for d, o in reservations.items() if o},
                   decisions=decisions, decisions_since_ms=decisions_since_ms, sessions=sessions,
                   last_pings=dict(load.last_pings))


def dead_letter_reasons(dep: Deployment) -> dict[str, int]:
    from schemas import dead_letter as dl

    reasons: dict[str, int] = {}
    for record in dep.read_all(dep.names.dlq):
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
                   report, took, load, dead_letter_reasons(dep), timing_figures(timing(dep)))


def assignments_kill(dep: Deployment, duration_s: float, kill_every_s: float) -> Outcome:
    """A process per stream role: the assignments process is killed (SIGKILL) and started again while
    the sessions process (with the API, which the checker reads sessions from) keeps running."""
    fault_env(dep)
    sessions = dep.start_worker("s", roles="sessions,api")
    assignments = dep.start_worker("a", roles="assignments")
    for worker in (sessions, assignments):
        worker.wait_ready(90)
    load = Load(dep.names, seed=13)
    load.start()
    started = time.monotonic()
    kills = 0
    next_kill = started + kill_every_s
    while time.monotonic() - started < duration_s:
        if time.monotonic() >= next_kill:
            assignments.kill()
            kills += 1
            assignments = dep.start_worker("a", roles="assignments")
            next_kill += kill_every_s
        time.sleep(0.2)
    load.stop()
    assignments.wait_ready(90)
    took = settle(dep, load, sessions)
    report = check(history(dep, load, sessions, dep.regions))
    pings = sum(sessions.stats()["pings"].values())
    return Outcome(f"assignments kill (SIGKILL x{kills}, every {kill_every_s:.0f}s, sessions process kept)",
                   report, took, load, dead_letter_reasons(dep),
                   {"sessions process alive": sessions.alive(), "pings applied by it": int(pings),
                    **timing_figures(timing(dep))})


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
                   dead_letter_reasons(dep), timing_figures(timing(dep)))


# -- timing: how long answers took, read back from the record timestamps --------------------------

SLOW_S = 2.0  # an answer slower than this is a symptom of the fault, not of the load


@dataclass
class Timing:
    latencies: dict[str, tuple[int, float]]  # order -> (answered at, epoch ms; seconds it took)
    max_gap_s: float  # the longest time without any answer while requests were waiting

    @property
    def max_latency_s(self) -> float:
        return max((took for _, took in self.latencies.values()), default=0.0)

    def p99_s(self) -> float:
        (p99,) = percentiles((took for _, took in self.latencies.values()), 0.99)
        return p99 if p99 is not None else 0.0

    def recovered_after(self, since: float) -> float:
        """Seconds from `since` (epoch s) until the last slow answer: after it, latency was normal."""
        slow = [at for at, took in self.latencies.values() if took > SLOW_S and at / 1000 >= since]
        return max(0.0, max(slow) / 1000 - since) if slow else 0.0


def timing(dep: Deployment, seen: dict[str, int] | None = None) -> Timing:
    """`seen`: when the load first read each order's answer (its clock, as the requests' times are),
    preferred to the answers' own times, which are their worker's clock (a fault may step it)."""
    asked: dict[str, int] = {}
    for region in dep.regions:
        for r in dep.read_all(dep.names.requests(region)):
            if r.key and not any(h[0] == "geodispatch.rerouted_from" for h in r.headers or ()):
                asked.setdefault(r.key.decode(), r.timestamp)
    first: dict[str, int] = {}
    for r in dep.read_all(dep.names.responses):
        order = json.loads(r.value)["orderId"]
        first[order] = min(first.get(order, r.timestamp), r.timestamp)
    first.update({order: at for order, at in (seen or {}).items() if order in first})
    latencies = {o: (first[o], max(0.0, (first[o] - asked[o]) / 1000)) for o in first if o in asked}
    return Timing(latencies, longest_stall([(first[o], asked[o]) for o in latencies]))


def longest_stall(answered: list[tuple[int, int]]) -> float:
    """Seconds of the longest time between two answers while some request was waiting: one asked
    before the first of them and answered at the second or later, whichever request that was.
    `answered`: (first answered at, asked at) per order, epoch ms."""
    events = sorted(answered)
    oldest_waiting = [0] * len(events)  # the earliest asked time among events[k:]
    earliest = None
    for k in range(len(events) - 1, -1, -1):
        earliest = events[k][1] if earliest is None else min(earliest, events[k][1])
        oldest_waiting[k] = earliest
    gap = 0.0
    for k in range(1, len(events)):
        if oldest_waiting[k] < events[k - 1][0]:
            gap = max(gap, (events[k][0] - events[k - 1][0]) / 1000)
    return gap


def timing_figures(t: Timing) -> dict[str, object]:
    return {"max answer latency (s)": round(t.max_latency_s, 1), "p99 answer latency (s)": round(t.p99_s(), 2),
            "longest stall (s)": round(t.max_gap_s, 1)}


def direct(worker: str) -> dict[str, str]:
    """A worker's own settings when it reaches the deployment's servers directly: none. A link-fault
    scenario gives each worker its proxies instead (tests/faults/links.py, Links.env)."""
    return {}


def _start_pair(dep: Deployment, env_of: Callable[[str], dict[str, str]] = direct) -> dict[str, WorkerProcess]:
    workers = {name: dep.start_worker(name, **env_of(name)) for name in ("a", "b")}
    for worker in workers.values():
        worker.wait_ready(120)
    return workers


def _finish(dep: Deployment, load: Load, workers: dict[str, WorkerProcess], name: str,
            extra: dict[str, object], since: float, decisions_since_ms: int | None = None) -> Outcome:
    """Stops the load, waits for every worker, drains, and checks. `since`: when the fault ended."""
    load.stop()
    alive = [w for w in workers.values() if w.process.poll() is None]
    for worker in alive:
        worker.wait_ready(120)
    took = settle(dep, load, alive[0], timeout=180)
    report = check(history(dep, load, alive[0], dep.regions, decisions_since_ms=decisions_since_ms))
    t = timing(dep)
    figures = {**extra, "drain after the load (s)": round(took, 1), **timing_figures(t)}
    return Outcome(name, report, t.recovered_after(since), load, dead_letter_reasons(dep), figures)


# -- broker restart --------------------------------------------------------------------------------


def broker_restart(dep: Deployment, broker: Broker, duration_s: float, sig: signal.Signals,
                   down_s: float = 5.0, env_of: Callable[[str], dict[str, str]] = direct,
                   during: Callable[[], AbstractContextManager[object]] = nullcontext) -> Outcome:
    """Mixed load; the broker gets `sig` a third of the way in, stays down `down_s`, comes back on
    the same data. The workers must carry on by themselves: none is restarted by the test. `during`:
    another fault the restart happens inside of (tests/faults/link_scenarios.py combines them)."""
    fault_env(dep)
    workers = _start_pair(dep, env_of)
    load = Load(dep.names, seed=13, bootstrap=dep.bootstrap)
    load.start()
    time.sleep(duration_s / 3)
    with during():
        stopping = broker.signal(sig)
        time.sleep(down_s)
        restart = broker.start()
    back = time.time()
    time.sleep(duration_s * 2 / 3)
    exited = {name: w.process.returncode for name, w in workers.items() if w.process.poll() is not None}
    assert not exited, (f"workers exited after the broker {sig.name}: {exited}\n"
                        + "\n".join(w.log()[-3000:] for w in workers.values()))
    extra = {"broker stop (s)": round(stopping, 1), "broker restart (s)": round(restart, 1),
             "broker outage (s)": round(stopping + down_s + restart, 1), "workers restarted by the test": 0}
    return _finish(dep, load, workers, f"broker {sig.name} ({down_s:.0f}s down, {duration_s:.0f}s of load)",
                   extra, back)


# -- Redis restart ---------------------------------------------------------------------------------


def redis_restart(dep: Deployment, server: RedisServer, duration_s: float, wipes: int) -> Outcome:
    """Mixed load; Redis is shut down without saving and started empty `wipes` times. The workers must
    retry their index writes, rebuild the index from the sessions table (the epoch key is gone) and
    restore the reservations of drivers on a trip from their sessions."""
    fault_env(dep)
    workers = _start_pair(dep)
    load = Load(dep.names, seed=17, bootstrap=dep.bootstrap, keep_open_every=40)
    load.start()
    every = duration_s / (wipes + 1)
    outage = rebuilt = 0.0
    last = time.time()
    for _ in range(wipes):
        time.sleep(every)
        outage = max(outage, server.wipe())
        last = time.time()
        rebuilt = max(rebuilt, _index_rebuilt(dep, load))
    time.sleep(max(0.0, every - rebuilt))
    extra = {"Redis wipes": wipes, "Redis outage (s)": round(outage, 2),
             "index whole again after (s)": round(rebuilt, 1), "trips left open": len(load.kept_open)}
    return _finish(dep, load, workers, f"Redis restart (SHUTDOWN NOSAVE x{wipes}, {duration_s:.0f}s of load)",
                   extra, last, decisions_since_ms=int(last * 1000))


def _index_rebuilt(dep: Deployment, load: Load, timeout: float = 30) -> float:
    """Seconds until the emptied Redis has a new epoch and every driver's document again."""
    client = dep.redis()
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            drivers = sum(1 for _ in client.scan_iter(f"{dep.redis_prefix}d:*", count=1000))
            if drivers >= load.drivers and client.exists(dep.redis_keys.epoch):
                break
        except redis.RedisError:
            pass
        time.sleep(0.1)
    return time.monotonic() - started


# -- rebalance churn ---------------------------------------------------------------------------------


def rebalance_churn(dep: Deployment, duration_s: float, cycle_s: float,
                    env_of: Callable[[str], dict[str, str]] = direct,
                    during: Callable[[], AbstractContextManager[object]] = nullcontext) -> Outcome:
    """Mixed load on two workers; a third joins, stays half a cycle, leaves (SIGTERM), again and again.
    `during`: another fault the churn happens inside of."""
    fault_env(dep)
    workers = _start_pair(dep, env_of)
    load = Load(dep.names, seed=19, bootstrap=dep.bootstrap)
    load.start()
    started = time.monotonic()
    joins = 0
    with during():
        while time.monotonic() - started + cycle_s <= duration_s:
            # Each join is a new worker (a data directory of its own) on the third worker's links.
            third = dep.start_worker(f"c{joins}", **env_of("c"))
            joins += 1
            time.sleep(cycle_s / 2)
            third.stop()
            time.sleep(cycle_s / 2)
        time.sleep(max(0.0, duration_s - (time.monotonic() - started)))
    return _finish(dep, load, workers, f"rebalance churn (third worker joins and leaves x{joins}, "
                   f"every {cycle_s:.0f}s, {duration_s:.0f}s of load)", {"joins and leaves": joins}, time.time())


# -- node faults on the clusters (issue 23) ---------------------------------------------------------


def on_cluster(dep: Deployment, cluster: Cluster, wait_replicas: int = 1) -> None:
    """The deployment on the cluster's servers: topics of three replicas, the index on the Redis Cluster,
    reservations and decisions confirmed by a replica (unless `wait_replicas` says otherwise)."""
    dep.bootstrap, dep.redis_cluster_nodes = cluster.bootstrap, cluster.redis_nodes
    dep.extra_env.update(GEODISPATCH_REPLICATION_FACTOR="3", GEODISPATCH_REDIS_WAIT_REPLICAS=str(wait_replicas))


def cluster_broker_kill(dep: Deployment, cluster: Cluster, duration_s: float, down_s: float = 10.0) -> Outcome:
    """Mixed load on the three-broker cluster; one broker (a controller too) is SIGKILLed a third of the
    way in and started again `down_s` later on its data. Its partitions' leadership moves to the
    others; acknowledged records were on two replicas at least. No worker is restarted by the test."""
    workers = _start_pair(dep)
    load = Load(dep.names, seed=23, bootstrap=dep.bootstrap)
    load.start()
    time.sleep(duration_s / 3)
    cluster.kill_broker(2)
    time.sleep(down_s)
    restart = cluster.start_broker(2)
    back = time.time()
    time.sleep(max(0.0, duration_s * 2 / 3 - down_s - restart))
    exited = {name: w.process.returncode for name, w in workers.items() if w.process.poll() is not None}
    assert not exited, f"workers exited after a broker's SIGKILL: {exited}"
    extra = {"broker down (s)": round(down_s + restart, 1), "workers restarted by the test": 0}
    name = f"cluster broker SIGKILL (1 of 3, {down_s:.0f}s down, {duration_s:.0f}s of load)"
    return _finish(dep, load, workers, name, extra, back)


def redis_primary_kill(dep: Deployment, cluster: Cluster, duration_s: float) -> Outcome:
    """Mixed load on the Redis Cluster; a primary is SIGKILLed a third of the way in, its replica takes
    its slots over (the cluster's node timeout), and the dead node is started again (empty: it rejoins
    as the new primary's replica). What the failover may lose is what the primary had not replicated;
    the checker finds any reservation or decision so lost, and the workers count the writes that went
    out unconfirmed (geodispatch_redis_unreplicated_writes_total)."""
    workers = _start_pair(dep)
    load = Load(dep.names, seed=29, bootstrap=dep.bootstrap)
    load.start()
    time.sleep(duration_s / 3)
    primaries = cluster.redis_primaries()
    victim = primaries[0]
    killed = time.monotonic()
    cluster.kill_redis(victim)
    # Until its replica serves its slots: the cluster marks it failed after its node timeout, and then a
    # replica is elected. Started again before that, a primary without persistence would come back
    # empty as the primary of its slots, and they would be lost.
    while True:
        serving = cluster.redis_primaries()
        if victim not in serving and len(serving) == len(primaries) and cluster.redis_ok():
            break
        time.sleep(0.1)
        assert time.monotonic() - killed < 60, "the Redis Cluster did not fail over within 60 s"
    failover = time.monotonic() - killed
    cluster.start_redis(victim)
    back = time.time()
    time.sleep(max(0.0, duration_s * 2 / 3 - failover))
    unreplicated = sum(_metric(w, "geodispatch_redis_unreplicated_writes_total") for w in workers.values()
                       if w.process.poll() is None)
    extra = {"slots unavailable (s)": round(failover, 1), "writes sent unconfirmed by a replica": int(unreplicated),
             "wait for replicas": dep.extra_env.get("GEODISPATCH_REDIS_WAIT_REPLICAS", "0")}
    return _finish(dep, load, workers, f"Redis primary SIGKILL (1 of 3, failover, {duration_s:.0f}s of load)",
                   extra, back)


def _metric(worker: WorkerProcess, name: str) -> float:
    status, text = worker.get("/metrics")
    if status != 200:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in str(text).splitlines() if line.startswith(name))
