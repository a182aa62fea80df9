"""A poisoned record reaches dispatch.dlq with its original bytes and every contract header, while the
good record after it is still processed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas import dead_letter as dl
from tests.integration.harness import wait_for

pytestmark = pytest.mark.cluster  # also run by `make test-cluster` (docs/SCALING.md)

HEADERS = [
    dl.ORIGINAL_TOPIC, dl.ORIGINAL_PARTITION, dl.ORIGINAL_OFFSET, dl.ORIGINAL_TIMESTAMP, dl.STAGE,
    dl.ERROR_CLASS, dl.ERROR_MESSAGE, dl.ATTEMPTS, dl.FAILED_AT,
]


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

    status, session = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        worker.get("/driver-sessions/sessions/drv_dlq")), message="the good ping to be applied")
    assert session["last_loc"]["lat"] == 40.7128
