"""Link-fault scenarios (issue 27): one link of one worker cut while its other link works, every link
slowed and then reset, and link faults combined with a broker restart or rebalance churn. Each runs
under mixed load on a broker, a Redis and a Toxiproxy of the test's own, and ends with the checker,
like the process faults of scenarios.py (whose machinery it reuses)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.faults.links import KAFKA, REDIS, Links, Toxiproxy, latency, reset_peer
from tests.faults.load import Load
from tests.faults.scenarios import (
    Outcome,
    Timing,
    _finish,
    _metric,
    _start_pair,
    broker_restart,
    fault_env,
    rebalance_churn,
    timing,
)
from tests.faults.servers import Broker, RedisServer
from tests.integration.harness import Deployment, WorkerProcess

# The pair the scenarios run, and rebalance churn's third worker: each has its own proxies.
WORKERS = ("a", "b", "c")
CUT = "a"  # the worker whose link a one-worker fault takes
# The slow link: one-way delay of every chunk from the server, so every round trip takes this longer.
LATENCY_MS, JITTER_MS = 200, 50
# How long a connection under reset_peer lives once it carries data: long enough for a request or
# two to get through, so that resets land in the middle of the clients' work, not before it.
RESET_AFTER_MS = 500
# A Kafka cut's zombie: its Redis round trips this much longer, BACKLOG_LEAD_S before the cut too.
BACKLOG_MS, BACKLOG_LEAD_S = 1000, 3.0
# A new decision (reserved or failed) observes the candidates it scored: its count is the decisions
# a worker made, whether or not their answers ever reached the broker.
DECISIONS = "geodispatch_assignment_candidates_count"


@dataclass
class Lab:
    """A deployment on a broker, a Redis and a Toxiproxy of the test's own, every worker's Kafka and
    Redis links behind proxies of their own."""

    dep: Deployment
    broker: Broker
    redis: RedisServer
    links: Links

    def bypassing(self, worker: WorkerProcess) -> list[str]:
        return self.links.bypassing(worker.pid, self.broker, self.redis)


@contextmanager
def lab(tmp: Path) -> Iterator[Lab]:
    """Starts the servers, the proxies and the deployment's topics; stops all of it on exit."""
    with ExitStack() as stack:
        toxiproxy = Toxiproxy(tmp)
        stack.callback(toxiproxy.close)
        toxiproxy.start()
        links = Links(toxiproxy, WORKERS)
        broker = Broker(tmp, links.advertised())
        stack.callback(broker.close)
        broker.start()
        redis = RedisServer(tmp)
        stack.callback(redis.close)
        redis.start()
        links.connect(broker, redis)
        # Nothing to remove from servers that go with the test: stopping the workers is enough, and
        # healed links first, so that they stop at once.
        dep = Deployment(workdir=tmp, bootstrap=broker.bootstrap, redis_url=redis.url)
        stack.callback(dep.stop_all)
        stack.callback(toxiproxy.reset)
        fault_env(dep)
        dep.apply_topics()
        yield Lab(dep, broker, redis, links)


def waited(t: Timing, since: float, until: float) -> float:
    """The longest time a request asked between since and until (epoch s) waited for its answer."""
    return max((took for at, took in t.latencies.values() if since <= at / 1000 - took <= until), default=0.0)


def reused_decisions(worker: WorkerProcess) -> int:
    """Answers this worker gave with a decision it found in Redis, made by another worker (or by
    itself before a restart) for the same order."""
    count = 0
    for line in worker.log().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "assignment_decided" and event.get("reused") is True:
            count += 1
    return count


def _totals(worker: WorkerProcess) -> dict[str, float]:
    """The cut worker's counters that say what it did while a link was down."""
    stats = worker.stats()
    return {"retries": sum(stats["retries"].values()), "dead letters": sum(stats["dead_letters"].values()),
            "failed answers": sum(stats["assignments"]["failures"].values()),
            "decisions": _metric(worker, DECISIONS), "partitions": len(stats["partitions"]["assigned"])}


def _loaded(lab: Lab, seed: int) -> tuple[dict[str, WorkerProcess], Load]:
    workers = _start_pair(lab.dep, lab.links.env)
    load = Load(lab.dep.names, seed=seed, bootstrap=lab.dep.bootstrap)
    load.start()
    return workers, load


def one_link_cut(lab: Lab, link: str, duration_s: float, cut_s: float) -> Outcome:
    """Mixed load on two workers; a third of the way in, worker a's `link` (kafka or redis) is cut for
    cut_s while its other link works, then healed. What a did meanwhile is read from its counters,
    at the start and the end of the cut (its HTTP API goes through no proxy).

    Before a Kafka cut, a's Redis link is slowed (BACKLOG_MS) for BACKLOG_LEAD_S and until the heal,
    so that a holds requests it fetched and has not answered when its Kafka link goes: the zombie
    that can still reserve. Without it a decides each request within milliseconds of its fetch, and
    the cut finds none to decide."""
    workers, load = _loaded(lab, seed=31 if link == REDIS else 37)
    cut = workers[CUT]
    time.sleep(duration_s / 3)
    with ExitStack() as fault:
        if link == KAFKA:
            fault.enter_context(lab.links.poisoned([(CUT, REDIS)], latency(BACKLOG_MS)))
            time.sleep(BACKLOG_LEAD_S)
        before = _totals(cut)
        cut_at = time.time()
        fault.enter_context(lab.links.cut((CUT, link)))
        time.sleep(cut_s)
        during = _totals(cut)
        bypass = lab.bypassing(cut)
    healed = time.time()
    assert not bypass, f"worker {CUT} reached the servers around its cut proxy: {bypass}"
    time.sleep(max(0.0, duration_s * 2 / 3 - cut_s))
    extra: dict[str, object] = {
        f"{link} cut of worker {CUT} (s)": round(healed - cut_at, 1),
        f"partitions {CUT} held at the cut": int(before["partitions"]),
        f"partitions {CUT} held at the heal": int(during["partitions"]),
        **{f"{CUT}'s {name} during the cut": int(during[name] - before[name])
           for name in ("decisions", "retries", "dead letters", "failed answers")},
    }
    outcome = _finish(lab.dep, load, workers, f"{link} cut (worker {CUT} of 2, {cut_s:.0f}s, "
                      f"{duration_s:.0f}s of load)", extra, healed)
    outcome.extra = {**(outcome.extra or {}), "longest wait of a request asked during the cut (s)":
                     round(waited(timing(lab.dep), cut_at, healed), 1)}
    if link == KAFKA:
        outcome.extra["decisions given again by b"] = reused_decisions(workers["b"])
    return outcome


def latency_then_reset(lab: Lab, duration_s: float, slow_s: float, reset_s: float) -> Outcome:
    """Mixed load; a third of the way in every link of both workers (Kafka and Redis) gets 200 ms ±
    50 ms more round trip for slow_s, then every connection on them is reset half a second after it
    carries data, for reset_s; then all is healed."""
    workers, load = _loaded(lab, seed=41)
    time.sleep(duration_s / 3)
    every = lab.links.every(("a", "b"))
    slow_at = time.time()
    with lab.links.poisoned(every, latency(LATENCY_MS, JITTER_MS)):
        time.sleep(slow_s)
    reset_at = time.time()
    with lab.links.poisoned(every, reset_peer(RESET_AFTER_MS)):
        time.sleep(reset_s)
    healed = time.time()
    time.sleep(max(0.0, duration_s * 2 / 3 - slow_s - reset_s))
    extra: dict[str, object] = {"latency on every link (s)": round(reset_at - slow_at, 1),
                                "resets on every link (s)": round(healed - reset_at, 1)}
    outcome = _finish(lab.dep, load, workers, f"latency then resets ({LATENCY_MS}±{JITTER_MS} ms {slow_s:.0f}s, "
                      f"reset_peer {reset_s:.0f}s, {duration_s:.0f}s of load)", extra, healed)
    t = timing(lab.dep)
    outcome.extra = {**(outcome.extra or {}),
                     "longest wait of a request asked under latency (s)": round(waited(t, slow_at, reset_at), 1),
                     "longest wait of a request asked under resets (s)": round(waited(t, reset_at, healed), 1)}
    return outcome


@contextmanager
def _spanning(fault: AbstractContextManager[object], margin_s: float) -> Iterator[None]:
    """`fault` from margin_s before the body to margin_s after it: the other fault happens well inside."""
    with fault:
        time.sleep(margin_s)
        yield
        time.sleep(margin_s)


def broker_restart_during_redis_cut(lab: Lab, duration_s: float) -> Outcome:
    """broker_restart (SIGKILL) while worker a is cut from Redis, from 3 s before the kill to 3 s
    after the broker is back."""
    def during() -> AbstractContextManager[object]:
        return _spanning(lab.links.cut((CUT, REDIS)), 3.0)

    outcome = broker_restart(lab.dep, lab.broker, duration_s, signal.SIGKILL, env_of=lab.links.env, during=during)
    outcome.name = f"broker SIGKILL during a Redis cut (worker {CUT} of 2, {duration_s:.0f}s of load)"
    return outcome


def churn_under_latency(lab: Lab, duration_s: float, cycle_s: float) -> Outcome:
    """rebalance_churn with 200 ms ± 50 ms on every link of every worker (the joining third's too)
    from the first join to the end of the load."""
    outcome = rebalance_churn(lab.dep, duration_s, cycle_s, env_of=lab.links.env,
                              during=lambda: lab.links.poisoned(lab.links.every(), latency(LATENCY_MS, JITTER_MS)))
    outcome.name = f"churn under latency ({outcome.name.split('(', 1)[1]}"
    return outcome
