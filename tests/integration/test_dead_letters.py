"""A poisoned record reaches dispatch.dlq with its original bytes and every contract header (its stack
trace among them), while the good record after it is still processed; a request's W3C trace context goes
on to its answer, and to its dead letter."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas import dead_letter as dl
from tests.integration.harness import wait_for

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)

HEADERS = [
    dl.ORIGINAL_TOPIC, dl.ORIGINAL_PARTITION, dl.ORIGINAL_OFFSET, dl.ORIGINAL_TIMESTAMP, dl.STAGE,
    dl.ERROR_CLASS, dl.ERROR_MESSAGE, dl.ATTEMPTS, dl.FAILED_AT, dl.ERROR_STACKTRACE,
]
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def test_poisoned_record_is_dead_lettered_and_the_next_one_processed(deployment):
    worker = deployment.start_worker()
    worker.wait_ready()
    topic = deployment.names.locations("4_-7")
    poison = b"\x00\x00\x00\x00\x01\xff\xfe not avro"
    good = json.dumps({"driver_id": "drv_dlq", "lat": 40.7128, "lng": -74.006,
                       "ts": datetime.now(UTC).isoformat()}).encode()
    deployment.produce(topic, [(b"drv_dlq", poison)], headers=[("trace-id", b"abc")])
    deployment.produce(topic, [(b"drv_dlq", good)])

    letters = deployment.read(deployment.names.dlq, 1)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.key == b"drv_dlq"
    assert letter.value == poison
    headers = dl.header_dict(letter.headers)
    assert set(HEADERS) <= set(headers)
    assert headers["trace-id"] == "abc"
    assert headers[dl.ORIGINAL_TOPIC] == topic
    assert headers[dl.ORIGINAL_OFFSET] == "0"
    assert headers[dl.ERROR_CLASS] == "InvalidMessage"
    assert headers[dl.STAGE] == "sessions"
    assert headers[dl.ATTEMPTS] == "1"
    assert int(headers[dl.ORIGINAL_TIMESTAMP]) > 1_600_000_000_000
    datetime.fromisoformat(headers[dl.FAILED_AT].replace("Z", "+00:00"))
    trace = headers[dl.ERROR_STACKTRACE]
    assert trace.startswith("Traceback (most recent call last):") and "InvalidMessage" in trace.splitlines()[-1]
    assert len(dict(letter.headers)[dl.ERROR_STACKTRACE]) <= dl.MAX_STACKTRACE_BYTES

    status, session = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        worker.get("/driver-sessions/sessions/drv_dlq")), message="the good ping to be applied")
    assert session["last_loc"]["lat"] == 40.7128


def request(order_id: str | None) -> bytes:
    body = {"eventId": f"evt-{order_id}", "eventType": "AssignmentRequested",
            "occurredAt": datetime.now(UTC).isoformat(),
            "geoKey": "4_-7", "restaurantLatitude": 40.7128, "restaurantLongitude": -74.006,
            "customerLatitude": 40.7589, "customerLongitude": -73.9851, "preparationTime": 10, "radius": 5,
            "items": [{"name": "pizza", "quantity": 1}], "totalAmount": 34.97}
    if order_id is not None:
        body["orderId"] = order_id
    return json.dumps(body).encode()


def test_a_requests_trace_context_goes_on_to_its_answer_and_its_dead_letter(deployment):
    worker = deployment.start_worker()
    worker.wait_ready()
    topic = deployment.names.requests("4_-7")
    traced = [("traceparent", TRACEPARENT), ("tracestate", TRACESTATE), ("x-caller", b"order-service")]
    deployment.produce(topic, [(b"ord_traced", request("ord_traced"))], headers=traced)
    deployment.produce(topic, [(b"ord_plain", request("ord_plain"))])
    deployment.produce(topic, [(b"no-order", request(None))], headers=traced)

    answers = {record.key: record for record in deployment.read(deployment.names.responses, 2)}
    assert set(answers) == {b"ord_traced", b"ord_plain"}
    assert json.loads(answers[b"ord_traced"].value)["orderId"] == "ord_traced"  # answered (no driver: failed)
    assert list(answers[b"ord_traced"].headers) == [("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)]
    assert not answers[b"ord_plain"].headers

    (letter,) = deployment.read(deployment.names.dlq, 1)
    headers = dict(letter.headers)
    assert letter.key == b"no-order" and headers[dl.STAGE] == b"assignment"
    assert headers["traceparent"] == TRACEPARENT and headers["tracestate"] == TRACESTATE
    assert headers["x-caller"] == b"order-service"
    assert b"orderId" in headers[dl.ERROR_STACKTRACE]
