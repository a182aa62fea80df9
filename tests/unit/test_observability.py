"""The observability pack: the alert rules and the dashboard in deploy/observability/ parse, query
only metrics the processes' registries define, and cover what the operators are promised; process
metrics and build info on every registry; consumer lag from the consumers' own positions; liveness
and readiness answers."""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from consumers.gateway.metrics import GatewayMetrics
from consumers.gateway.server import Gateway
from infra.process_metrics import package_version, source_commit
from streams.answers import health_answer, live_answer
from streams.metrics import Metrics, PartitionLag
from streams.views import consumer_lag, partitions_ready
from tests.observability import (
    SYNTHETIC,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    exposed_names,
    metric_names,
    named_metrics,
    rule_expressions,
    rules,
)

DURATION = r"^\d+(s|m|h)$"


def in_process_names() -> set[str]:
    pages = (generate_latest(Metrics(CollectorRegistry()).registry),
             generate_latest(GatewayMetrics(CollectorRegistry()).registry))
    return set().union(*(exposed_names(page.decode()) for page in pages))


# -- the rule file ----------------------------------------------------------------------------------


def test_the_rule_file_has_prometheus_structure():
    import re

    document = rules()
    assert set(document) == {"groups"}
    names = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert isinstance(rule["alert"], str) and isinstance(rule["expr"], str)
            if "for" in rule:
                assert re.match(DURATION, rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"]
            names.append(rule["alert"])
    assert len(names) == len(set(names)), "alert names are unique"


def _balanced(expr: str) -> bool:
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    in_string = False
    for char in expr:
        if char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            return False
    return not stack and not in_string


def test_every_query_is_balanced_and_names_metrics_of_ours():
    for title, expr in {**rule_expressions(), **dashboard_expressions()}.items():
        assert _balanced(expr), title
        names = metric_names(expr)
        assert names, f"{title}: no metric found in {expr!r}"
        for name in names - SYNTHETIC:
            assert name.startswith(("geodispatch_", "process_", "python_")), (title, name)


def test_the_name_extraction_reads_promql_as_prometheus_would():
    expr = ('histogram_quantile(0.99, sum by (le, stream) (rate(geodispatch_event_lag_seconds_bucket'
            '{stream="pings"}[5m]))) > 1e3 and on (job) up{job=~"geo.*"} offset 5m')
    assert metric_names(expr) == {"geodispatch_event_lag_seconds_bucket", "up"}


def test_the_alerts_cover_what_operators_are_promised():
    alerted = set().union(*(metric_names(expr) for expr in rule_expressions().values()))
    assert {
        "geodispatch_dead_letters_total",  # the dead-letter rate
        "geodispatch_assignment_latency_seconds_bucket",  # answer p99
        "geodispatch_consumer_lag_records",  # lag
        "geodispatch_fenced_writes_total",  # fenced writes
        "geodispatch_heartbeat_timeouts_total",  # heartbeat timeouts
        "geodispatch_gateway_dropped_subscribers_total",  # gateway drops
    } <= alerted


def test_every_metric_the_rules_and_the_dashboard_name_is_defined_by_a_registry():
    defined = in_process_names()
    missing = {name: where for name, where in named_metrics().items() if name not in defined | SYNTHETIC}
    assert not missing, missing


# -- the dashboard ----------------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard():
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" and v["name"] == "datasource" for v in board["templating"]["list"])
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


def test_the_dashboard_shows_lag_process_and_build_metrics():
    shown = set().union(*(metric_names(expr) for expr in dashboard_expressions().values()))
    assert {"geodispatch_consumer_lag_records", "process_cpu_seconds_total", "process_resident_memory_bytes",
            "geodispatch_build_info", "geodispatch_assignment_latency_seconds_bucket",
            "geodispatch_dead_letters_total", "geodispatch_gateway_dropped_subscribers_total"} <= shown


# -- process metrics and build info ------------------------------------------------------------------


@pytest.mark.parametrize("make", [Metrics, GatewayMetrics])
def test_every_registry_has_process_metrics_and_build_info(make):
    registry = CollectorRegistry()
    make(registry)
    page = generate_latest(registry).decode()
    for family in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                   "python_info", "python_gc_collections_total"):
        assert f"# TYPE {family} " in page, family
    build = registry.get_sample_value("geodispatch_build_info", {
        "version": package_version(), "commit": source_commit(), "python": platform.python_version()})
    assert build == 1.0


def test_the_commit_is_read_from_a_checkout(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(sha + "\n")
    assert source_commit(tmp_path) == sha
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert source_commit(tmp_path) == sha
    (git / "HEAD").write_text(sha[::-1] + "\n")  # detached
    assert source_commit(tmp_path) == sha[::-1]
    assert source_commit(tmp_path / "nowhere") == ""


# -- consumer lag ------------------------------------------------------------------------------------


def test_consumer_lag_is_summed_per_group_and_topic_and_forgets_what_is_no_longer_read():
    metrics = Metrics(CollectorRegistry())
    metrics.set_consumer_lag([PartitionLag("gd", "requests", 0, 5), PartitionLag("gd", "requests", 1, 7),
                              PartitionLag("gd.pings", "pings", 0, 0), PartitionLag("gd.pings", "pings", 1, -2)])
    value = metrics.registry.get_sample_value
    assert value("geodispatch_consumer_lag_records", {"group": "gd", "topic": "requests"}) == 12
    assert value("geodispatch_consumer_lag_max_records", {"group": "gd", "topic": "requests"}) == 7
    assert value("geodispatch_consumer_partitions", {"group": "gd", "topic": "requests"}) == 2
    # A position past a high watermark fetched earlier is no lag, never a negative one.
    assert value("geodispatch_consumer_lag_records", {"group": "gd.pings", "topic": "pings"}) == 0
    metrics.set_consumer_lag([PartitionLag("gd.pings", "pings", 0, 3)])
    assert value("geodispatch_consumer_lag_records", {"group": "gd", "topic": "requests"}) is None
    assert value("geodispatch_consumer_lag_records", {"group": "gd.pings", "topic": "pings"}) == 3


def _consumer(positions: dict[TopicPartition, tuple[int | None, int | None]],
              paused: tuple[TopicPartition, ...] = ()) -> AIOKafkaConsumer:
    """An aiokafka consumer, never started, whose partitions are where `positions` says: (position,
    high watermark), None for not known yet."""
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    consumer.assign(list(positions))
    assignment = consumer._subscription.subscription.assignment
    for tp, (position, highwater) in positions.items():
        state = assignment.state_value(tp)
        if position is not None:
            state.seek(position)
        state.highwater = highwater
    if paused:
        consumer.pause(*paused)
    return consumer


async def test_consumer_lag_reads_every_consumer_of_the_worker():
    commands, pings, requests = (TopicPartition("gd-dispatch.driver_commands", 0),
                                 TopicPartition("gd-driver_locations.nyc", 0),
                                 TopicPartition("gd-dispatch.requests.nyc", 0))
    changelog = TopicPartition("gd-geodispatch-sessions-changelog", 0)
    leader = TopicPartition("gd-geodispatch-__assignor-__leader", 0)
    faust_consumer = _consumer({commands: (10, 15), requests: (0, 50), pings: (0, 900), changelog: (3, 80),
                                leader: (0, 1)})
    ping_consumer = _consumer({pings: (800, 900), TopicPartition("gd-driver_locations.nyc", 1): (5, None)})
    request_consumer = _consumer({requests: (40, 50), TopicPartition("gd-dispatch.requests.nyc", 1): (1, 9)},
                                 paused=(TopicPartition("gd-dispatch.requests.nyc", 1),))
    app = SimpleNamespace(
        conf=SimpleNamespace(id="gd-geodispatch"),
        consumer=SimpleNamespace(_thread=SimpleNamespace(_consumer=faust_consumer)),
        # faust subscribes to the pings and the requests but never fetches them (streams.faust_fixes).
        read_elsewhere={pings.topic, requests.topic},
        tables=SimpleNamespace(changelog_topics={changelog.topic}),
        runtime=SimpleNamespace(pings=SimpleNamespace(_consumer=ping_consumer, _group="gd-geodispatch.pings"),
                                request_batches=SimpleNamespace(_consumer=request_consumer)),
    )
    try:
        lags = sorted(consumer_lag(app), key=lambda lag: lag.topic)
        assert lags == [
            PartitionLag("gd-geodispatch", commands.topic, 0, 5),
            PartitionLag("gd-geodispatch", requests.topic, 0, 10),  # partition 1: paused (given up)
            PartitionLag("gd-geodispatch.pings", pings.topic, 0, 100),  # partition 1: no high watermark yet
        ]
        # A process without the stream roles' readers, before faust's consumer started: no lag at all.
        bare = SimpleNamespace(conf=app.conf, consumer=SimpleNamespace(), read_elsewhere=set(),
                               runtime=SimpleNamespace(pings=None, request_batches=None))
        assert consumer_lag(bare) == []
    finally:
        for consumer in (faust_consumer, ping_consumer, request_consumer):
            await consumer.stop()


# -- liveness and readiness ---------------------------------------------------------------------------


async def _connected() -> str:
    return "connected"


async def _down() -> str:
    return "unreachable: ConnectionError"


async def test_liveness_asks_nothing_and_readiness_names_what_is_missing():
    assert await live_answer() == ({"status": "alive"}, 200)
    assert await health_answer({"kafka": _connected(), "redis": _connected()}, "ready", "not_ready") == (
        {"status": "ready", "kafka": "connected", "redis": "connected"}, 200)
    body, status = await health_answer({"kafka": _connected(), "redis": _down()}, "ready", "not_ready")
    assert (status, body["status"], body["redis"]) == (503, "not_ready", "unreachable: ConnectionError")
    # /health keeps its words.
    assert (await health_answer({"redis": _connected()}))[0]["status"] == "healthy"


async def test_readiness_waits_for_the_partitions():
    app = SimpleNamespace(ready=lambda: False, rebalancing=True)
    assert await partitions_ready(app) == "rebalancing"
    app.rebalancing = False
    assert await partitions_ready(app) == "restoring"
    app.ready = lambda: True
    assert await partitions_ready(app) == "ready"
    body, status = await health_answer({"kafka": _connected(), "partitions": partitions_ready(app)}, "ready",
                                       "not_ready")
    assert (status, body["partitions"]) == (200, "ready")


async def test_the_gateway_is_live_while_starting_and_ready_once_caught_up():
    gateway = SimpleNamespace(feed=SimpleNamespace(caught_up=asyncio.Event()))
    live = await Gateway.live(gateway, None)
    ready = await Gateway.ready(gateway, None)
    assert (live.status, ready.status) == (200, 503)
    gateway.feed.caught_up.set()
    ready = await Gateway.ready(gateway, None)
    assert ready.status == 200 and ready.body == b'{"status":"ready","caught_up":true}'


# -- the picture's renderer (deploy/observability/render_dashboard.py) -------------------------------


def _renderer():
    import importlib.util

    from tests.observability import OBSERVABILITY

    spec = importlib.util.spec_from_file_location("render_dashboard", OBSERVABILITY / "render_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _round(t: float, registry: CollectorRegistry) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    samples = [[s.name, {**s.labels, "instance": "w:1", "job": "geodispatch-worker"}, s.value]
               for family in text_string_to_metric_families(text) for s in family.samples]
    return {"t": t, "targets": {"w:1": samples}}


def test_the_renderer_reads_every_query_of_the_dashboard_and_evaluates_them_as_prometheus_would():
    render = _renderer()
    for expr in dashboard_expressions().values():
        render.Parser(expr).parse()  # raises on anything it would not plot faithfully
    metrics = Metrics(CollectorRegistry())
    requests = metrics.assignment_requests.labels("nyc", "assigned")  # a series at both rounds
    rounds = [_round(0.0, metrics.registry)]
    for _ in range(90):
        metrics.assignment_latency.observe(0.004)
    for _ in range(10):
        metrics.assignment_latency.observe(0.2)
    requests.inc(100)
    metrics.assignment_requests.labels("nyc", "refused").inc(5)  # first seen at the second round: no rate yet
    metrics.drivers_online.labels("nyc").set(42)
    rounds.append(_round(10.0, metrics.registry))
    samples = render.Samples(rounds, window_s=10.0)
    panels = {panel["title"]: panel for panel in dashboard_panels()}
    by_outcome = list(render.panel_series(samples, panels["Assignment requests by outcome"]))
    assert by_outcome == [("assigned", [10.0], [10.0])]  # 100 in 10 s; no rate before a window has passed
    latency = {name: ys[-1] for name, _, ys in render.panel_series(samples, panels["Answer latency p50 / p95 / p99"])}
    # p50 in the bucket that holds 0.004, p99 in the one that holds 0.2, as histogram_quantile places them.
    assert latency["p50"] <= 0.005 and 0.1 < latency["p99"] <= 0.25
    drivers = {name: (xs, ys) for name, xs, ys in render.panel_series(samples, panels["Drivers online and available"])}
    # A sum over no series is no series, as in Prometheus: the gauge had no region at the first round.
    assert drivers["online"] == ([10.0], [42.0])


def test_the_renderer_plots_the_dashboard(tmp_path):
    pytest.importorskip("matplotlib")  # the `plots` extra
    render = _renderer()
    metrics = Metrics(CollectorRegistry())
    path = tmp_path / "samples.jsonl"
    lines = []
    for t in range(0, 30, 5):
        metrics.pings.labels("applied").inc(50)
        lines.append(_round(float(t), metrics.registry))
    path.write_text("\n".join(json.dumps(line) for line in lines))
    render.plot(path, tmp_path / "dashboard.png", window_s=5.0)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
