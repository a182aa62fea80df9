"""Schema registry mode against a registry's HTTP API: `geodispatch schemas register` registers every topic's
subject idempotently, and a worker with GEODISPATCH_SCHEMA_REGISTRY_URL decodes records framed with the
registry's ids (a newer producer schema resolved into our reader, fetched once per id) and dead-letters
an unknown id or a schema it cannot resolve, with the reason.

The registry is tests/integration/fake_registry.py, a stand-in speaking the same endpoints, because no
real registry server runs on this machine (docs/SCHEMAS.md says why)."""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
from datetime import UTC, datetime

import fastavro
import pytest

from schemas import AssignmentResponse
from schemas import dead_letter as dl
from schemas.codec import AVRO_DIR, Codec
from schemas.registry import RegistryClient, subjects
from tests.integration.drivers import iso, send_ping, send_status, wait_session
from tests.integration.fake_registry import FakeRegistry
from tests.integration.harness import ROOT, wait_for

CLIENTS = ROOT / "tests" / "clients"


@pytest.fixture
def registry():
    with FakeRegistry() as running:
        yield running


def _register(deployment, registry) -> dict[str, dict]:
    result = deployment.cli("schemas", "register", "--json", GEODISPATCH_SCHEMA_REGISTRY_URL=registry.url)
    return {row["subject"]: row for row in map(json.loads, result.stdout.splitlines())}


def test_register_gives_every_topic_a_subject_and_is_idempotent(deployment, registry):
    first = _register(deployment, registry)
    expected = subjects(deployment.names, deployment.regions)
    assert set(first) == set(expected) == set(registry.subjects)
    assert {row["schema"] for row in first.values()} == set(expected.values())
    # One schema, one id, whichever subject it is under (the same LocationPing for every region).
    by_schema = {}
    for row in first.values():
        assert by_schema.setdefault(row["schema"], row["id"]) == row["id"]
    assert _register(deployment, registry) == first
    assert all(len(versions) == 1 for versions in registry.subjects.values())  # no version added again
    table = deployment.cli("schemas", "register", GEODISPATCH_SCHEMA_REGISTRY_URL=registry.url).stdout
    assert f"{len(expected)} subjects registered in {registry.url}" in table


def test_register_reports_a_refused_schema_and_an_unreachable_registry(deployment, registry):
    # Someone registered a LocationPing whose lat is a string: ours (a double) cannot read it (BACKWARD).
    schema = json.loads((AVRO_DIR / "LocationPing.v1.avsc").read_text())
    schema["fields"] = [{**f, "type": "string"} if f["name"] == "lat" else f for f in schema["fields"]]
    subject = f"{deployment.names.locations(deployment.regions[0])}-value"
    registry.subjects[subject] = [registry.add(schema)]
    refused = deployment.cli("schemas", "register", check=False, GEODISPATCH_SCHEMA_REGISTRY_URL=registry.url)
    assert refused.returncode == 1, refused
    assert f"error: {subject}" in refused.stderr and "HTTP 409" in refused.stderr
    gone = deployment.cli("schemas", "register", "--url", "http://127.0.0.1:9/", check=False)
    assert gone.returncode == 3 and "Connection refused" in gone.stderr


def _framed(schema_id: int, schema: dict, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), record)
    return out.getvalue()


def test_the_worker_decodes_registry_ids_and_dead_letters_what_it_cannot_resolve(deployment, registry):
    registered = _register(deployment, registry)
    ping_v1 = json.loads((AVRO_DIR / "LocationPing.v1.avsc").read_text())
    # Another team's producer moved on: its LocationPing has one more field (with a default).
    newer = {**ping_v1, "fields": [*ping_v1["fields"], {"name": "provider", "type": ["null", "string"],
                                                          "default": None}]}
    newer_id = registry.add(newer)
    broken = {**ping_v1, "fields": [{**f, "type": "string"} if f["name"] == "lat" else f
                                    for f in ping_v1["fields"]]}
    broken_id = registry.add(broken)
    assert newer_id > 10 and broken_id > 10  # neither is a fixed id the codec could know

    worker = deployment.start_worker(GEODISPATCH_SCHEMA_REGISTRY_URL=registry.url, GEODISPATCH_OUTPUT_FORMAT="avro")
    worker.wait_ready()
    topic = deployment.names.locations("4_-7")
    now = datetime.now(UTC)
    pings = [(f"drv_reg{i}".encode(), _framed(newer_id, newer, {
        "driver_id": f"drv_reg{i}", "lat": 40.7 + i / 1000, "lng": -74.0, "speed_mps": None, "heading_deg": None,
        "accuracy_m": None, "ts": now.isoformat(), "provider": "gps"}))
        for i in range(50)]
    old = json.loads((AVRO_DIR / "history" / "LocationPing.v1.json").read_text())
    unknown = _framed(999_999, ping_v1, old)
    unresolvable = _framed(broken_id, broken, {**old, "lat": "north"})
    deployment.produce(topic, [(b"drv_unknown", unknown), (b"drv_broken", unresolvable), *pings])

    status, session = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        worker.get("/driver-sessions/sessions/drv_reg49")), message="the last registry-framed ping to be applied")
    assert session["last_loc"]["lat"] == pytest.approx(40.749)
    assert worker.get("/driver-sessions/sessions/drv_reg0")[0] == 200

    letters = deployment.read(deployment.names.dlq, 2)
    reasons = {letter.key: dl.header_dict(letter.headers)[dl.ERROR_MESSAGE] for letter in letters}
    assert "Avro schema id 999999 is not in the schema registry" in reasons[b"drv_unknown"]
    assert f"registry schema id {broken_id} cannot be read as LocationPing" in reasons[b"drv_broken"]
    assert "type mismatch" in reasons[b"drv_broken"]
    # Fifty records, one fetch: the id was resolved on first sight and kept.
    assert registry.calls[f"GET /schemas/ids/{newer_id}"] == 1
    assert registry.calls["GET /schemas/ids/999999"] == 1

    # Outputs in Avro (GEODISPATCH_OUTPUT_FORMAT=avro): an answer carries the registry's id of its subject.
    # No driver is online (a first ping makes an offline session), so the answer is a refusal.
    request = {"eventId": "e-reg", "eventType": "AssignmentRequested",
               "occurredAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"), "orderId": "order_reg",
               "geoKey": "4_-7", "restaurantLatitude": 40.7128, "restaurantLongitude": -74.006,
               "customerLatitude": 40.7589, "customerLongitude": -73.9851, "preparationTime": 10, "radius": 5,
               "items": [{"name": "pizza", "qty": 1}], "totalAmount": 12.5}
    deployment.produce(deployment.names.requests("4_-7"), [(b"order_reg", json.dumps(request).encode())])
    answers = deployment.read(deployment.names.responses, 1)
    assert len(answers) == 1
    subject = f"{deployment.names.responses}-value"
    assert answers[0].value[0] == 0
    assert struct.unpack(">I", answers[0].value[1:5])[0] == registered[subject]["id"]
    reader = Codec.load(registry=RegistryClient(registry.url))
    answer = reader.decode(AssignmentResponse, answers[0].value)
    assert (answer.orderId, answer.status) == ("order_reg", "failed")


def _encoded_by_a_standard_serializer(registry, subject: str, schema_file: str, record: dict) -> tuple[int, bytes]:
    """The value as another team's Node producer frames it: @kafkajs/confluent-schema-registry registers
    the schema under the subject and writes the id the registry gave it."""
    if not (CLIENTS / "node_modules" / "@kafkajs" / "confluent-schema-registry").is_dir():
        pytest.fail("the Node clients are not installed: `make test` does it (npm ci --prefix tests/clients)",
                    pytrace=False)
    result = subprocess.run(
        ["node", str(CLIENTS / "registry_encode.js"), "--url", registry.url, "--subject", subject,
         "--schema", str(AVRO_DIR / schema_file), "--record", json.dumps(record)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    encoded = json.loads(result.stdout)
    return encoded["id"], base64.b64decode(encoded["value"])


def test_a_request_from_a_standard_registry_serializer_is_decided(deployment, registry):
    """What used to be dead-lettered (only the fixed ids 1-8 were known): a request framed with the id a
    registry gave another language's serializer is decoded and assigned like any other."""
    worker = deployment.start_worker(GEODISPATCH_SCHEMA_REGISTRY_URL=registry.url)
    worker.wait_ready()
    send_status(deployment, "drv_std")
    send_ping(deployment, "drv_std")
    wait_session(worker, "drv_std", lambda s: s["online"] and s["last_loc"], message="online and located")

    topic = deployment.names.requests("4_-7")
    record = {**json.loads((AVRO_DIR / "history" / "AssignmentRequested.v1.json").read_text()),
              "orderId": "order_std", "occurredAt": iso()}
    schema_id, value = _encoded_by_a_standard_serializer(registry, f"{topic}-value", "AssignmentRequested.v1.avsc",
                                                         record)
    assert value[0] == 0 and struct.unpack(">I", value[1:5])[0] == schema_id
    deployment.produce(topic, [(b"order_std", value)])

    (answer,) = deployment.read(deployment.names.responses, 1)
    body = json.loads(answer.value)
    assert (body["orderId"], body["status"], body["driverId"]) == ("order_std", "assigned", "drv_std"), body
    assert registry.calls[f"GET /schemas/ids/{schema_id}"] == 1
