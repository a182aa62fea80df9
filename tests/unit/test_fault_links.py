"""The link-fault suite's pure parts: the broker's per-worker listeners, the toxics as Toxiproxy's API
takes them, and the wait of the requests asked during a fault."""

from __future__ import annotations

from tests.faults.link_scenarios import waited
from tests.faults.links import bandwidth, latency, listener_name, proxy_name, reset_peer, timeout
from tests.faults.scenarios import Timing, longest_stall
from tests.faults.servers import worker_listener_config


def test_a_broker_without_worker_listeners_keeps_its_template():
    assert worker_listener_config(9092, 9093, {}, {}) == ""


def test_each_worker_listener_listens_on_its_port_and_advertises_its_proxy():
    config = worker_listener_config(9092, 9093, {"W_B": 20002, "W_A": 20001}, {"W_A": 30001, "W_B": 30002})
    assert config.splitlines() == [
        "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,W_A://127.0.0.1:20001,"
        "W_B://127.0.0.1:20002",
        # The default listener still advertises the broker itself: the test's own clients use it.
        "advertised.listeners=PLAINTEXT://127.0.0.1:9092,W_A://127.0.0.1:30001,W_B://127.0.0.1:30002",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,W_A:PLAINTEXT,W_B:PLAINTEXT",
    ]


def test_names_of_a_workers_listener_and_proxies():
    assert listener_name("a") == "W_A"
    assert proxy_name("a", "kafka") == "a-kafka"


def test_toxics_as_the_api_takes_them():
    assert latency(200, 50).body() == {"name": "latency_downstream", "type": "latency", "stream": "downstream",
                                       "toxicity": 1.0, "attributes": {"latency": 200, "jitter": 50}}
    # A reset is triggered by what the worker sends, so that a connection idle at the time survives.
    assert reset_peer(500).body()["stream"] == "upstream"
    assert reset_peer(500).body()["attributes"] == {"timeout": 500}
    # One toxic of a type per stream and proxy: the name says which, so both directions can coexist.
    assert latency(1, stream="upstream").name != latency(1).name
    assert timeout().body()["attributes"] == {"timeout": 0}
    assert bandwidth(64).body()["attributes"] == {"rate": 64}


def test_the_wait_counts_only_requests_asked_in_the_window():
    # order -> (answered at epoch ms, seconds it took): asked at 9 s, 12 s and 30 s.
    t = Timing({"o1": (10_000, 1.0), "o2": (20_000, 8.0), "o3": (31_000, 1.0)}, max_gap_s=0.0)
    assert waited(t, 10.0, 20.0) == 8.0
    assert waited(t, 0.0, 10.0) == 1.0
    assert waited(t, 40.0, 50.0) == 0.0


def test_a_stall_counts_while_any_request_waits_not_only_the_next_one_answered():
    # (answered at, asked at) in ms: "old" asked at 1 s waits through the 10 s without answers
    # between 2 s and 12 s, though the answer at 12 s is a request asked at 11 s.
    answered = [(2_000, 1_500), (12_000, 11_000), (13_000, 1_000)]
    assert longest_stall(answered) == 10.0


def test_no_stall_when_nothing_waits_between_answers():
    assert longest_stall([(2_000, 1_500), (12_000, 11_000)]) == 0.0
    assert longest_stall([]) == 0.0
