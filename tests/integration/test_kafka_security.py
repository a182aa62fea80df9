"""Kafka security: a second broker of our own (own ports, own data dir under tmp, started with
infra/kafka/kafka.sh) with a SASL_SSL listener and SCRAM-SHA-512 users, and an SSL listener that
requires a client certificate (mutual TLS). Clients built from Settings.kafka_client_options()
produce and consume; a plaintext client, a wrong password and a client without a certificate are
refused; a real worker connects with SASL_SSL and processes a ping.

It starts a JVM, so it is slow (about 20-40 s to start on this machine) and has generous timeouts;
the broker is shared by the tests of this module and stopped at the end, whatever happens."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.settings import Settings
from tests.integration.certs import Certs, make_certs
from tests.integration.harness import ROOT, free_port, wait_for

KAFKA_SH = ROOT / "infra" / "kafka" / "kafka.sh"
ADMIN = ("admin", "admin-secret")
ALICE = ("alice", "alice-secret-0451")
START_TIMEOUT_S = 180
pytestmark = pytest.mark.integration


class SecureBroker:
    def __init__(self, tmp: Path, certs: Certs) -> None:
        self.tmp = tmp
        self.certs = certs
        self.sasl_port = free_port()
        self.ssl_port = free_port()
        self.controller_port = free_port()
        self.data_dir = tmp / "kafka"
        self.data_dir.mkdir()

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def _store_config(self) -> str:
        c = self.certs
        return (
            f"ssl.keystore.type=PKCS12\nssl.keystore.location={c.keystore}\n"
            f"ssl.keystore.password={c.password}\nssl.key.password={c.password}\n"
            f"ssl.truststore.type=PKCS12\nssl.truststore.location={c.truststore}\n"
            f"ssl.truststore.password={c.password}\n"
        )

    def write_config(self) -> tuple[Path, Path]:
        jaas = f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN[0]}" ' \
               f'password="{ADMIN[1]}";'
        extra = self.tmp / "secure.properties"
        extra.write_text(
            "# Appended by kafka.sh to the template; later keys win.\n"
            f"listeners=SASL_SSL://127.0.0.1:{self.sasl_port},SSL://127.0.0.1:{self.ssl_port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}\n"
            f"advertised.listeners=SASL_SSL://127.0.0.1:{self.sasl_port},SSL://127.0.0.1:{self.ssl_port}\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL\n"
            "inter.broker.listener.name=SASL_SSL\n"
            "sasl.enabled.mechanisms=SCRAM-SHA-512\n"
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512\n"
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}\n"
            "listener.name.ssl.ssl.client.auth=required\n"
            + self._store_config()
        )
        client = self.tmp / "admin-client.properties"
        client.write_text(
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
            f"sasl.jaas.config={jaas}\n"
            f"ssl.truststore.type=PKCS12\nssl.truststore.location={self.certs.truststore}\n"
            f"ssl.truststore.password={self.certs.password}\n"
        )
        return extra, client

    def env(self) -> dict[str, str]:
        extra, client = self.write_config()
        env = dict(os.environ)
        env.update(
            KAFKA_PORT=str(self.sasl_port),
            KAFKA_CONTROLLER_PORT=str(self.controller_port),
            KAFKA_DATA_DIR=str(self.data_dir),
            KAFKA_EXTRA_CONFIG=str(extra),
            KAFKA_CLIENT_CONFIG=str(client),
            KAFKA_SCRAM_USERS=f"{ADMIN[0]}:{ADMIN[1]} {ALICE[0]}:{ALICE[1]}",
            KAFKA_START_TIMEOUT=str(START_TIMEOUT_S - 30),
        )
        return env

    def up(self) -> None:
        self._env = self.env()
        result = subprocess.run([str(KAFKA_SH), "up"], env=self._env, capture_output=True, text=True,
                                timeout=START_TIMEOUT_S)
        if result.returncode != 0:
            raise AssertionError(f"the secure broker did not start:\n{result.stdout}\n{result.stderr}\n"
                                 f"{self.log_tail()}")

    def down(self) -> None:
        pid_file = self.data_dir / "kafka.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        subprocess.run([str(KAFKA_SH), "down"], env=self._env, capture_output=True, text=True, timeout=60)
        if pid is not None and _alive(pid):  # never leave our JVM behind, whatever kafka.sh did
            os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        log = self.data_dir / "logs" / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure-kafka")
    secure = SecureBroker(tmp, make_certs(tmp / "certs"))
    try:
        secure.up()
        yield secure
    finally:
        secure.down()


def sasl_settings(broker: SecureBroker, user: str, password: str) -> Settings:
    return Settings(
        kafka_bootstrap_servers=broker.sasl_bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=user,
        kafka_sasl_password=password,
        kafka_ssl_cafile=broker.certs.ca_cert,
    )


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _create_topic(settings: Settings, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **settings.kafka_client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _round_trip(settings: Settings, topic: str, value: bytes) -> bytes:
    options = settings.kafka_client_options()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", **options)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest", group_id=f"g-{uuid.uuid4().hex[:8]}",
                                **settings.kafka_client_options())
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    return record.value


async def _refused(bootstrap: str, **options) -> str:
    """Why a producer could not start against the broker (it must not)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=8000, **options)
    try:
        await asyncio.wait_for(producer.start(), 40)
    except Exception as exc:  # what aiokafka raises differs by failure; all of them mean "refused"
        return f"{type(exc).__name__}: {exc}"
    finally:
        await producer.stop()
    raise AssertionError(f"a client with {sorted(options)} connected to {bootstrap}")


def test_sasl_ssl_client_from_the_settings_produces_and_consumes(broker):
    settings = sasl_settings(broker, *ALICE)
    options = settings.kafka_client_options()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    topic = f"secure.{uuid.uuid4().hex[:8]}"
    run(_create_topic(settings, topic))
    assert run(_round_trip(settings, topic, b"over SASL_SSL")) == b"over SASL_SSL"


def test_plaintext_wrong_password_and_untrusted_clients_are_refused(broker, caplog):
    # aiokafka raises "Unable to bootstrap" for all of these and logs the reason, which we check.
    caplog.set_level(logging.ERROR, logger="aiokafka")
    run(_refused(broker.sasl_bootstrap), timeout=60)
    caplog.clear()
    wrong = sasl_settings(broker, ALICE[0], "not-alices-password")
    run(_refused(broker.sasl_bootstrap, **wrong.kafka_client_options()), timeout=60)
    assert "SaslAuthenticationFailed" in caplog.text, caplog.text
    caplog.clear()
    unknown = sasl_settings(broker, "mallory", ALICE[1])
    run(_refused(broker.sasl_bootstrap, **unknown.kafka_client_options()), timeout=60)
    assert "SaslAuthenticationFailed" in caplog.text, caplog.text
    caplog.clear()
    # TLS that does not trust our CA: the default context verifies the broker's certificate.
    untrusted = Settings(kafka_bootstrap_servers=broker.sasl_bootstrap, kafka_security_protocol="SASL_SSL",
                         kafka_sasl_username=ALICE[0], kafka_sasl_password=ALICE[1])
    run(_refused(broker.sasl_bootstrap, **untrusted.kafka_client_options()), timeout=60)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text or "certificate verify failed" in caplog.text, caplog.text


def test_mutual_tls_needs_a_client_certificate(broker):
    certs = broker.certs
    mtls = Settings(kafka_bootstrap_servers=broker.ssl_bootstrap, kafka_security_protocol="SSL",
                    kafka_ssl_cafile=certs.ca_cert, kafka_ssl_certfile=certs.client_cert,
                    kafka_ssl_keyfile=certs.client_key)
    topic = f"mtls.{uuid.uuid4().hex[:8]}"
    run(_create_topic(mtls, topic))
    assert run(_round_trip(mtls, topic, b"over mutual TLS")) == b"over mutual TLS"
    no_cert = Settings(kafka_bootstrap_servers=broker.ssl_bootstrap, kafka_security_protocol="SSL",
                       kafka_ssl_cafile=certs.ca_cert)
    run(_refused(broker.ssl_bootstrap, **no_cert.kafka_client_options()), timeout=60)


def _worker_env(broker: SecureBroker, mode: str) -> tuple[dict[str, str], Settings]:
    certs = broker.certs
    if mode == "sasl_ssl":
        return {
            "KAFKA_BOOTSTRAP_SERVERS": broker.sasl_bootstrap,
            "GEODISPATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "GEODISPATCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "GEODISPATCH_KAFKA_SASL_USERNAME": ALICE[0],
            "GEODISPATCH_KAFKA_SASL_PASSWORD": ALICE[1],
            "GEODISPATCH_KAFKA_SSL_CAFILE": str(certs.ca_cert),
        }, sasl_settings(broker, *ALICE)
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.ssl_bootstrap,
        "GEODISPATCH_KAFKA_SECURITY_PROTOCOL": "SSL",
        "GEODISPATCH_KAFKA_SSL_CAFILE": str(certs.ca_cert),
        "GEODISPATCH_KAFKA_SSL_CERTFILE": str(certs.client_cert),
        "GEODISPATCH_KAFKA_SSL_KEYFILE": str(certs.client_key),
    }, Settings(kafka_bootstrap_servers=broker.ssl_bootstrap, kafka_security_protocol="SSL",
                kafka_ssl_cafile=certs.ca_cert, kafka_ssl_certfile=certs.client_cert,
                kafka_ssl_keyfile=certs.client_key)


@pytest.mark.parametrize("mode", ["sasl_ssl", "mutual_tls"])
def test_the_worker_and_the_cli_connect_securely(broker, deployment, mode):
    secure_env, settings = _worker_env(broker, mode)
    deployment.extra_env.update(secure_env)
    deployment.apply_topics()  # the CLI's admin client, through the secured listener
    worker = deployment.start_worker()
    worker.wait_ready(timeout=120)

    driver = f"drv_{mode}"
    ping = {"driver_id": driver, "lat": 40.7128, "lng": -74.006, "ts": datetime.now(UTC).isoformat()}

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                    **settings.kafka_client_options())
        await producer.start()
        try:
            await producer.send_and_wait(deployment.names.locations("4_-7"), json.dumps(ping).encode(),
                                         key=driver.encode())
        finally:
            await producer.stop()

    run(send())

    def session():
        status, body = worker.get(f"/driver-sessions/sessions/{driver}")
        return body if status == 200 else None

    body = wait_for(session, timeout=60, message=f"the ping to reach the worker over {mode}")
    assert body["driver_id"] == driver
    status, health = worker.get("/health")
    assert (status, health["kafka"]) == (200, "connected"), health
    assert ALICE[1] not in worker.log()
