"""The worker is assembled in one place (streams.app.DispatchApp) from one table (streams.topology):
importing a module builds nothing, every input topic of the plan has its row, and the app's agents and
timers are exactly the table's."""

from __future__ import annotations

import subprocess
import sys

from infra.settings import Settings
from infra.topics import TABLES, TopicNames, plan
from streams import topology
from streams.app import DispatchApp

IMPORT_EVERYTHING = """
import gc, importlib, pkgutil
import faust, streams
for module in pkgutil.walk_packages(streams.__path__, "streams."):
    if module.name not in ("streams.__main__",):
        importlib.import_module(module.name)
print(sum(isinstance(o, faust.App) for o in gc.get_objects()))
"""


def test_importing_the_worker_builds_no_app():
    found = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "0"


def test_every_input_topic_of_the_plan_has_a_handler():
    settings = Settings()
    names = TopicNames(settings.topic_prefix)
    read = [topic for source in topology.INPUTS for topic in source.reads(names, settings.regions)]
    assert len(read) == len(set(read)), "a topic read by two inputs"
    # names.fences: a record per partition assignment, written by the app itself (its offset is the fence token).
    written_only = {names.responses, names.presence, names.tracking, names.dlq, names.supply_demand, names.fences}
    # Read by the real-time gateway (consumers.gateway), not the worker.
    gateway_only = {names.booking_owners}
    # The DLQ tools' replay ledger (consumers.dlq): the worker neither reads nor writes it.
    tools_only = {names.dlq_replays}
    changelogs = {names.changelog(settings.faust_app_id, table) for table in TABLES}
    planned = {spec.name for spec in plan(names, settings.regions, settings.partitions, 1, settings.faust_app_id)}
    assert set(read) == planned - written_only - gateway_only - tools_only - changelogs


def test_the_app_runs_what_the_table_says():
    app = DispatchApp(Settings())
    agents = {source.name for source in topology.INPUTS if source.reader == topology.FAUST_AGENT}
    assert set(app.agents) == agents
    assert [task.__wrapped__.__wrapped__ for task in app._app_tasks] == [timer.handler for timer in topology.TIMERS]
    assert app.runtime.pings in app.runtime.partition_services
