"""REDIS_URL carries Redis credentials and TLS: the index client takes user, password, TLS and its CA
from the URL alone, and the settings never print the password. REDIS_CLUSTER_NODES, when set, makes it
a Redis Cluster client instead."""

from __future__ import annotations

from redis.asyncio import RedisCluster
from redis.asyncio.connection import SSLConnection

from infra.settings import Settings
from streams.index import RegionIndex


def _kwargs(url: str) -> tuple[type, dict]:
    pool = RegionIndex.from_settings(Settings(redis_url=url)).redis.connection_pool
    return pool.connection_class, pool.connection_kwargs


def test_an_acl_user_and_password_come_from_the_url():
    cls, kwargs = _kwargs("redis://dispatch:s%40cret@redis.internal:6380/2")
    assert (kwargs["username"], kwargs["password"]) == ("dispatch", "s@cret")
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.internal", 6380, 2)
    assert cls is not SSLConnection


def test_a_password_alone_is_the_default_user():
    _, kwargs = _kwargs("redis://:only-a-password@127.0.0.1:6379/0")
    assert kwargs["password"] == "only-a-password"
    assert kwargs.get("username") is None


def test_rediss_is_tls_with_the_ca_and_client_certificate_from_the_query():
    cls, kwargs = _kwargs(
        "rediss://dispatch:pw@redis.internal:6380/0?ssl_ca_certs=/etc/gd/ca.pem&ssl_cert_reqs=required"
        "&ssl_certfile=/etc/gd/client.pem&ssl_keyfile=/etc/gd/client.key"
    )
    assert cls is SSLConnection
    assert kwargs["ssl_ca_certs"] == "/etc/gd/ca.pem"
    assert kwargs["ssl_cert_reqs"] == "required"
    assert (kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == ("/etc/gd/client.pem", "/etc/gd/client.key")


def test_the_redis_url_is_a_secret_in_the_settings(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://dispatch:hunter2@127.0.0.1:6379/0")
    settings = Settings()
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    assert "hunter2" in settings.redis_url.get_secret_value()


def test_cluster_nodes_make_a_cluster_client_of_the_index():
    client = RegionIndex.from_settings(Settings(redis_cluster_nodes="10.0.0.1:7000, 10.0.0.2:7001")).redis
    assert isinstance(client, RedisCluster)
    assert [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()] == [("10.0.0.1", 7000),
                                                                                        ("10.0.0.2", 7001)]
