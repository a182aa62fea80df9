"""The data directory: each app id keeps its table stores apart, so deployments sharing a directory
both start; a store that has applied more of a changelog than the log holds stops the worker with
what to do."""

from __future__ import annotations

import time

from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.harness import BOOTSTRAP, run
from tests.integration.test_sessions_restart import PATIENT, _online_fleet, sessions_changelog


def test_two_app_ids_on_one_data_directory_both_start(deployment):
    first = deployment.start_worker("w1", **PATIENT)
    first.wait_ready()
    _online_fleet(deployment, first)
    first.stop()

    other = deployment.start_worker("w1", GEODISPATCH_APP_ID="other", **PATIENT)  # same directory
    other.wait_ready(timeout=90)
    other.stop()
    stores = {path.name for path in deployment.data_dir("w1").iterdir()}
    assert stores == {f"{deployment.prefix}geodispatch", f"{deployment.prefix}other"}, stores

    again = deployment.start_worker("w1", **PATIENT)  # the first app id finds its own stores
    again.wait_ready(timeout=90)
    assert "ConsistencyError" not in first.log() + other.log() + again.log()


def test_a_store_ahead_of_its_changelog_stops_the_worker_saying_what_to_do(deployment):
    worker = deployment.start_worker("w1", **PATIENT)
    worker.wait_ready()
    _online_fleet(deployment, worker)
    worker.stop()

    async def delete_changelog() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            await admin.delete_topics([sessions_changelog(deployment)])
        finally:
            await admin.close()

    run(delete_changelog())
    time.sleep(2)  # the broker finishes the deletion before the worker creates the topic again
    worker = deployment.start_worker("w1", **PATIENT)
    assert worker.process.wait(timeout=90) != 0
    log = worker.log()
    assert "table_store_ahead_of_changelog" in log, log[-3000:]
    store_dir = deployment.data_dir("w1") / f"{deployment.prefix}geodispatch"
    assert f"delete {store_dir}" in log, log[-3000:]
