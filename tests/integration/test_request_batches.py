"""Requests read in blocks by the worker's own consumer (streams.agents.requests), on the real broker
and Redis: the partitions are the ones faust's group assigns, the offsets are committed in the app's
group once the answers are taken, and a worker started again answers nothing a second time."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from infra.clients import committed_offsets, new_consumer
from infra.settings import Settings
from tests.integration.harness import Deployment, wait_for
from tests.integration.test_assignment import City
from tests.integration.test_split_roles import PATIENT

ORDERS = 40


def request_partitions(deployment: Deployment) -> list[TopicPartition]:
    return [TopicPartition(deployment.names.requests(region), p)
            for region in deployment.regions for p in range(deployment.partitions)]


async def _ends(deployment: Deployment, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = new_consumer(Settings(kafka_bootstrap_servers=deployment.bootstrap))
    await consumer.start()
    try:
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


def committed(deployment: Deployment, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    settings = Settings(kafka_bootstrap_servers=deployment.bootstrap)
    return asyncio.run(committed_offsets(settings, f"{deployment.prefix}{deployment.app_id}", tps))


def test_requests_are_committed_in_the_apps_group_once_answered_and_not_answered_again(deployment):
    worker = deployment.start_worker(**PATIENT)
    worker.wait_ready()
    city = City(deployment, worker)
    for n in range(ORDERS):
        city.ask(f"far_{n}")  # nobody near: each answered at once, "No available drivers in area"
    answers = city.answers(ORDERS)
    assert sorted(answers) == sorted(f"far_{n}" for n in range(ORDERS))
    assert all(len(found) == 1 for found in answers.values())

    tps = request_partitions(deployment)
    ends = {tp: end for tp, end in asyncio.run(_ends(deployment, tps)).items() if end}
    wait_for(lambda: {tp: committed(deployment, tps).get(tp) for tp in ends} == ends,
             message="the request offsets committed in the app's group up to their ends")

    worker.stop()
    again = deployment.start_worker("w2", **PATIENT)
    again.wait_ready()
    city.ask("far_last")
    assert "far_last" in city.answers(ORDERS + 1)  # read after everything before it on its partition
    keys = [record.key for record in deployment.read_all(deployment.names.responses)]
    assert len(keys) == len(set(keys)) == ORDERS + 1, "a request was answered again after the restart"
