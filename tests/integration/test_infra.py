"""The real broker and the real Redis that `make test` started answer."""

from __future__ import annotations

import uuid

import redis

from tests.integration.harness import REDIS_URL


def test_record_round_trips_through_the_broker(deployment):
    topic = deployment.names.status
    value = f'{{"probe": "{uuid.uuid4()}"}}'.encode()
    deployment.produce(topic, [(b"drv_probe", value)], headers=[("h", b"1")])
    records = [r for r in deployment.read(topic, 1) if r.value == value]
    assert len(records) == 1
    assert records[0].key == b"drv_probe"
    assert records[0].headers == (("h", b"1"),)


def test_key_round_trips_through_redis(deployment):
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{deployment.redis_prefix}probe"
    client.set(key, b"value", ex=60)
    assert client.get(key) == b"value"
    client.delete(key)


def test_topics_apply_is_idempotent(deployment):
    second = deployment.cli("topics", "apply").stdout
    assert "0 changed" in second
    listing = deployment.cli("topics", "list").stdout
    assert f"{deployment.names.dlq}" in listing
