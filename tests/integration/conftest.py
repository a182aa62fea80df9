"""Fixtures for tests against the real broker and Redis."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from infra.settings import Settings
from streams.index import RegionIndex
from tests.integration.harness import BOOTSTRAP, REDIS_URL, Deployment

REQUIRED = os.environ.get("GEODISPATCH_REQUIRE_INFRA") == "1" or os.environ.get("CI") == "true"


def _reachable(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2):
            return True
    except OSError:
        return False


def _redis_host_port(url: str) -> str:
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return rest if ":" in rest else f"{rest}:6379"


@pytest.fixture(scope="session", autouse=True)
def infrastructure() -> None:
    cluster_nodes = os.environ.get("REDIS_CLUSTER_NODES")
    redis_address = cluster_nodes.split(",")[0].strip() if cluster_nodes else _redis_host_port(REDIS_URL)
    missing = [name for name, address in (("Kafka", BOOTSTRAP.split(",")[0]), ("Redis", redis_address))
               if not _reachable(address)]
    if missing:
        message = f"{' and '.join(missing)} not reachable; run `make infra-up` (or `make test`, which does)"
        if REQUIRED:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture
def deployment(tmp_path):
    dep = Deployment(workdir=tmp_path)
    dep.apply_topics()
    yield dep
    dep.cleanup()


@pytest.fixture
async def index():
    """A region index of the real Redis (or Redis Cluster: REDIS_CLUSTER_NODES) under a prefix of its own,
    deleted afterwards."""
    prefix = f"gd:t{uuid.uuid4().hex[:8]}:"
    regions = RegionIndex.from_settings(Settings(redis_prefix=prefix, partitions=4))
    yield regions
    keys = [key async for key in regions.redis.scan_iter(match=prefix + "*")]
    if keys:
        await regions.redis.delete(*keys)
    await regions.aclose()
