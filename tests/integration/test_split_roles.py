"""The stream roles in processes of their own (`geodispatch worker --roles sessions`, `--roles
assignments`, `--roles api`), on the real broker and Redis: they answer seed-003 requests exactly as
one worker of every role does, a deployment changes shape without answering a request twice, and a
request sent while the sessions process works through 100,000 pings is answered at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from infra.local import ROOT, free_port_run
from tests.integration.harness import Deployment, wait_for
from tests.integration.test_assignment import City, request, unsuitable_and_suitable_drivers

PATIENT = {"GEODISPATCH_MISSED_HEARTBEATS": "1000", "GEODISPATCH_LOCATION_MAX_AGE_S": "60"}
# A request answered this long after it was sent waited behind the pings: alone on its process, it
# takes milliseconds; behind the backlog on the same event loop, seconds (bench/README.md).
BACKLOG_ANSWER_BOUND_S = 1.0


def split(deployment: Deployment) -> tuple[City, dict]:
    """The recommended shape: a process per role. The city's sessions are read from the API process."""
    processes = {role: deployment.start_worker(role, roles=role, **PATIENT) for role in ("sessions", "assignments")}
    processes["api"] = deployment.start_worker("api", roles="api", **PATIENT)
    for role in ("sessions", "assignments"):
        processes[role].wait_ready()
    processes["api"].wait_answering()
    return City(deployment, processes["api"]), processes


def one_process(deployment: Deployment) -> City:
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    return City(deployment, worker)


def dispatch_day(city: City) -> dict[str, list[tuple]]:
    """Seed 003's cases one after another, each answer awaited before the next request: the answers
    (and the trip each assigned driver's session then holds), with what no two runs share (times) left out."""
    unsuitable_and_suitable_drivers(city)
    asked = [("order_1", None), ("order_2", None), ("order_3", None),
             ("bad_lat", request("bad_lat", lat=91.5)), ("order_1", None)]
    for n, (order_id, body) in enumerate(asked, start=1):
        city.ask(order_id, body)
        wait_for(lambda n=n: len(city.dep.read(city.dep.names.responses, n, timeout=2)) >= n,
                 message=f"answer {n} ({order_id})")
    for driver, order_id in (("first", "order_1"), ("second", "order_2")):
        wait_for(lambda d=driver, o=order_id: city.session(d).get("trip_id") == o, message=f"{driver}'s trip")
    answers = city.answers(len(asked))
    return {order_id: [(a["status"], a.get("driverId"), a.get("eta"), a.get("error")) for a in found]
            for order_id, found in sorted(answers.items())}


@pytest.fixture
def second_deployment(tmp_path):
    dep = Deployment(workdir=tmp_path / "second")
    dep.workdir.mkdir()
    dep.apply_topics()
    yield dep
    dep.cleanup()


def test_a_process_per_role_answers_exactly_as_one_process_of_every_role(deployment, second_deployment):
    by_one = dispatch_day(one_process(deployment))
    assert by_one["order_1"] == [("assigned", "first", 21, None)] * 2, by_one
    assert by_one["order_3"] == [("failed", None, None, "No available drivers in area")], by_one
    by_roles = dispatch_day(split(second_deployment)[0])
    assert by_roles == by_one


def test_a_deployment_changes_shape_without_answering_a_request_again(deployment):
    city = one_process(deployment)
    nowhere = {"lat": 6.5244, "lng": 3.3792}  # no driver there: each answer is quick and final
    for n in range(3):
        city.ask(f"before_{n}", request(f"before_{n}", **nowhere))
    assert len(city.answers(3)) == 3
    city.worker.stop()

    assignments = deployment.start_worker("assignments", roles="assignments", **PATIENT)
    assignments.wait_ready()
    assert "request_offsets_carried" in assignments.log()
    city.ask("split_0", request("split_0", **nowhere))
    wait_for(lambda: "split_0" in city.answers(4, timeout=2), message="the split shape's answer")
    assignments.stop()

    city = one_process(deployment)
    city.ask("after_0", request("after_0", **nowhere))
    wait_for(lambda: "after_0" in city.answers(5, timeout=2), message="the single process's answer again")
    time.sleep(2)  # a request answered again would come within this
    answers = city.answers(6, timeout=3)
    assert {order: len(found) for order, found in answers.items()} == {
        "before_0": 1, "before_1": 1, "before_2": 1, "split_0": 1, "after_0": 1}


def test_a_request_is_answered_at_once_while_the_sessions_process_works_through_a_backlog(deployment):
    city, processes = split(deployment)
    city.driver("near", 0.5)
    sessions = processes["sessions"]
    sessions.process.send_signal(signal.SIGSTOP)  # the backlog builds while it cannot read
    try:
        subprocess.run([sys.executable, "-m", "bench.load", "pings", "--drivers", "10000", "--count", "100000"],
                       env=deployment.env(), cwd=ROOT, check=True, capture_output=True, timeout=300)
    finally:
        sessions.process.send_signal(signal.SIGCONT)
    pings_before = sessions.stats()["pings"]
    sent = {}
    for n in range(5):
        sent[f"during_{n}"] = time.time()
        city.ask(f"during_{n}", request(f"during_{n}", lat=6.5244, lng=3.3792))
        time.sleep(0.1)
    records = city.dep.read(city.dep.names.responses, 5, timeout=30)
    pings_after = sessions.stats()["pings"]
    latencies = {}
    for record in records:
        order_id = json.loads(record.value)["orderId"]
        latencies[order_id] = record.timestamp / 1000 - sent[order_id]
    assert set(latencies) == set(sent)
    assert max(latencies.values()) < BACKLOG_ANSWER_BOUND_S, latencies
    applied = sum(pings_after.values()) - sum(pings_before.values())
    assert applied < 100_000, f"the backlog was worked through ({applied} pings) before the answers came"


def test_geodispatch_run_starts_a_process_per_role_and_stops_them_together(deployment, tmp_path):
    port = free_port_run(3)
    env = deployment.env(GEODISPATCH_DATA_DIR=str(tmp_path / "data"))
    run = subprocess.Popen([sys.executable, "-m", "streams", "run", "--web-port", str(port)], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def answering(offset: int, path: str) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port + offset}{path}", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(lambda: answering(0, "/health") and answering(1, "/stats") and answering(2, "/stats"),
                 timeout=90, message="the API, sessions and assignments processes")
        children = psutil.Process(run.pid).children()
        roles = sorted(child.cmdline()[child.cmdline().index("--roles") + 1] for child in children)
        assert roles == ["api", "assignments", "sessions"]
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
        assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)
    finally:
        if run.poll() is None:
            run.kill()
