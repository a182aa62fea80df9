"""Redis access through REDIS_URL: an ACL user with a password limited to the deployment's own keys
(created on the running Redis for this test and deleted after), and TLS (rediss://) against a
second, TLS-only Redis started for this test. The worker works with the right credentials and
says clearly why not with the wrong ones."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
import redis

from tests.integration.certs import make_certs
from tests.integration.harness import REDIS_URL, free_port, wait_for


def _ping(driver: str) -> bytes:
    return json.dumps({"driver_id": driver, "lat": 40.7128, "lng": -74.006, "ts": datetime.now(UTC).isoformat()}
                      ).encode()


def _session_shows(worker, driver: str):
    def probe():
        status, body = worker.get(f"/driver-sessions/sessions/{driver}")
        return body if status == 200 else None

    return wait_for(probe, timeout=30, message=f"{driver}'s session in the index")


def _url_with(user: str, password: str) -> str:
    scheme, rest = REDIS_URL.split("://", 1)
    host_and_db = rest.rsplit("@", 1)[-1]
    return f"{scheme}://{quote(user)}:{quote(password)}@{host_and_db}"


@pytest.fixture
def acl_user(deployment):
    """A Redis ACL user allowed only the deployment's keys; deleted (and disconnected) afterwards."""
    admin = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    user = f"gdtest_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(18)
    # Every command but the dangerous ones (FLUSHALL, CONFIG, KEYS, ...), on the deployment's keys only.
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}",
                          f"~{deployment.redis_prefix}*", "resetchannels", "+@all", "-@dangerous")
    try:
        yield user, password
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def test_worker_uses_an_acl_user_and_refuses_a_wrong_password(deployment, acl_user):
    user, password = acl_user
    # The user really is limited: outside the prefix, and dangerous commands, are refused.
    limited = redis.Redis.from_url(_url_with(user, password), decode_responses=True)
    assert limited.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.get("gd:someone-else")
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.flushall()
    limited.close()

    worker = deployment.start_worker(REDIS_URL=_url_with(user, password))
    worker.wait_ready(timeout=90)
    deployment.produce(deployment.names.locations("4_-7"), [(b"drv_acl", _ping("drv_acl"))])
    assert _session_shows(worker, "drv_acl")["driver_id"] == "drv_acl"
    status, health = worker.get("/health")
    assert (status, health["redis"]) == (200, "connected"), health
    worker.stop()

    wrong = deployment.start_worker("wrong", REDIS_URL=_url_with(user, "not-the-password"))
    # It must not pass as ready, and it must say why: an authentication error, not a hang or a 200.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if wrong.process.poll() is not None or "WRONGPASS" in wrong.log() or "AuthenticationError" in wrong.log():
            break
        time.sleep(0.5)
    log = wrong.log()
    assert "AuthenticationError" in log or "WRONGPASS" in log or "invalid username-password" in log, log[-3000:]
    if wrong.process.poll() is None:
        status, health = wrong.get("/health")
        assert status == 503 and "AuthenticationError" in health["redis"], health
        status, _ = wrong.get("/driver-sessions/sessions/drv_acl")
        assert status != 200
    wrong.kill()


@pytest.fixture
def tls_redis(tmp_path):
    """A Redis listening only on TLS, with a certificate from a CA made for this test."""
    certs = make_certs(tmp_path / "certs")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
         "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
         "--tls-ca-cert-file", str(certs.ca_cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs.ca_cert}&ssl_cert_reqs=required"
    try:
        client = redis.Redis.from_url(url)
        wait_for(lambda: _answers(client), timeout=15, message="the TLS Redis to answer")
        client.close()
        yield url, port, certs
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def test_worker_uses_redis_over_tls(deployment, tls_redis):
    url, port, certs = tls_redis
    # Plaintext to the TLS port, and TLS without trusting the CA, are both refused.
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(host="127.0.0.1", port=port, socket_timeout=3).ping()
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required", socket_timeout=3).ping()

    worker = deployment.start_worker(REDIS_URL=url)
    worker.wait_ready(timeout=90)
    deployment.produce(deployment.names.locations("4_-7"), [(b"drv_tls", _ping("drv_tls"))])
    assert _session_shows(worker, "drv_tls")["driver_id"] == "drv_tls"
    stored = redis.Redis.from_url(url, decode_responses=True)
    assert stored.exists(deployment.redis_keys.driver("drv_tls"))
    stored.close()
