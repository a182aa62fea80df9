"""Failover time: how long the requests of a SIGKILLed worker's partitions wait until they are answered
again, for each way the consumer group can be set up (the session timeout, static membership)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tests.faults.load import Load
from tests.faults.scenarios import Outcome, _finish, fault_env, timing
from tests.integration.harness import Deployment, WorkerProcess

# Requests asked up to this long after a kill are counted as its victims': at the load's 10 requests/s
# over 8 request partitions, half of them the killed worker's, some reach its partitions in that time.
ASKED_WITHIN_S = 2.0
# Between one failover's end and the next kill: the group settles and the load runs normally again.
CALM_S = 8.0


@dataclass(frozen=True)
class GroupSetup:
    """How the workers join their group, and whether the killed one is started again at once (as an
    orchestrator's restart policy does) or never comes back."""

    label: str
    session_timeout_s: float
    static: bool = False
    restarted: bool = True

    def member(self, dep: Deployment, name: str) -> dict[str, str]:
        """The worker's own settings: a static member's id is its name, the same at every restart."""
        return {"GEODISPATCH_KAFKA_GROUP_INSTANCE_ID": f"{dep.prefix}{name}"} if self.static else {}

    def start(self, dep: Deployment, name: str, port: int | None = None) -> WorkerProcess:
        return dep.start_worker(name, port=port, **self.member(dep, name))


SETUPS: dict[str, GroupSetup] = {
    "default": GroupSetup("30s session timeout (the default)", 30),
    "short": GroupSetup("6s session timeout", 6),
    "static": GroupSetup("static membership, 30s session timeout", 30, static=True),
    "static-gone": GroupSetup("static membership, 30s, killed worker not restarted", 30, static=True,
                              restarted=False),
}


def failover_times(latencies: Mapping[str, tuple[int, float]], kills: list[float],
                   asked_within_s: float = ASKED_WITHIN_S) -> list[float]:
    """For each kill (epoch s), the seconds until the last request asked by then, or within
    `asked_within_s` after it, got its first answer: the killed worker's requests are the last ones
    answered. `latencies` is `Timing.latencies` (order -> (answered at, epoch ms; seconds it took)).
    A kill with no request answered after it counts 0."""
    times = []
    for killed in kills:
        answered_after = [at / 1000 - killed for at, took in latencies.values()
                          if at / 1000 - took <= killed + asked_within_s and at / 1000 > killed]
        times.append(round(max(answered_after, default=0.0), 1))
    return times


def spread(values: list[float]) -> dict[str, object]:
    return {"failover min (s)": min(values), "failover median (s)": round(statistics.median(values), 1),
            "failover max (s)": max(values)}


def failover(dep: Deployment, setup: GroupSetup, kills: int) -> Outcome:
    """Mixed load on two workers; `kills` times, one of the two (in turn) is SIGKILLed. It is started
    again at once if the setup says so; if not, a worker of a new name replaces it once the group has
    moved its partitions. The next kill waits until the group is whole and calm again."""
    fault_env(dep)
    dep.extra_env["GEODISPATCH_KAFKA_SESSION_TIMEOUT_S"] = f"{setup.session_timeout_s:g}"
    names = ["a", "b"]
    workers = {name: setup.start(dep, name) for name in names}
    for worker in workers.values():
        worker.wait_ready(120)
    load = Load(dep.names, seed=41, bootstrap=dep.bootstrap)
    load.start()
    time.sleep(CALM_S)
    killed_at: list[float] = []
    back_after: list[float] = []
    for n in range(kills):
        victim, survivor = names[n % 2], names[(n + 1) % 2]
        workers[victim].kill()
        killed_at.append(time.time())
        if setup.restarted:
            # On its port again: faust's assignor checks that the assignment a static member gets back,
            # made for the member it replaces, names this worker's own URL.
            workers[victim] = setup.start(dep, victim, workers[victim].port)
            back_after.append(round(workers[victim].wait_ready(setup.session_timeout_s * 3 + 90), 1))
        else:
            # Past the session timeout the group expels the dead member and rebalances; the replacement
            # joins only after that, so that its own join does not end the wait early.
            time.sleep(setup.session_timeout_s + 3)
            workers[survivor].wait_ready(90)
            del workers[victim]
            names[n % 2] = f"{victim}{n + 1}"
            workers[names[n % 2]] = setup.start(dep, names[n % 2])
            workers[names[n % 2]].wait_ready(120)
        time.sleep(CALM_S)
    extra: dict[str, object] = {"session timeout (s)": f"{setup.session_timeout_s:g}",
                                "static membership": setup.static, "killed worker restarted": setup.restarted,
                                "kills": len(killed_at)}
    if back_after:
        extra["restart to ready (s)"] = " ".join(f"{t:g}" for t in back_after)
    outcome = _finish(dep, load, workers, f"failover ({setup.label})", extra, killed_at[-1])
    times = failover_times(timing(dep).latencies, killed_at)
    outcome.extra = {**(outcome.extra or {}), "failover per kill (s)": " ".join(f"{t:g}" for t in times),
                     **spread(times)}
    return outcome
