"""The worker's faust app runs on our consumer and producer: its broker URLs name our transport, which
faust finds through the `faust.transports` entry point (pyproject.toml), and that transport's consumer
and producer are ours."""

from __future__ import annotations

from types import SimpleNamespace

from faust.transport import by_url

from infra.settings import Settings
from streams.app import faust_options
from streams.faust_fixes import GuardedConsumer


def test_the_apps_broker_urls_lead_faust_to_our_consumer():
    brokers = faust_options(Settings(kafka_bootstrap_servers="a:9092,b:9092"))["broker"]
    assert brokers == ["geodispatch://a:9092", "geodispatch://b:9092"]
    assert by_url(brokers[0]).Consumer is GuardedConsumer


def test_the_apps_producer_is_idempotent_with_every_replica_acknowledging():
    producer_class = by_url("geodispatch://a:9092").Producer
    producer = producer_class.__new__(producer_class)
    producer.app = SimpleNamespace(in_transaction=False)
    extra = producer._settings_extra()
    assert extra["enable_idempotence"] is True and extra["acks"] == "all"


def test_a_group_instance_id_makes_the_worker_a_static_member_and_none_a_dynamic_one():
    assert faust_options(Settings(kafka_group_instance_id="worker-0"))["consumer_group_instance_id"] == "worker-0"
    assert faust_options(Settings())["consumer_group_instance_id"] is None
