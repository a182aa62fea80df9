"""The operators' and neighbours' commands against the real broker: every subcommand's --help, produce and
consume round trips, the simulator's malformed records in the DLQ, list filters, replay after the cause is
fixed (and a second replay doing nothing)."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from schemas import dead_letter as dl
from streams.cli import main
from tests.integration.harness import wait_for

SUBCOMMANDS = [
    ["produce"], ["produce", "ping"], ["produce", "status"], ["produce", "trip"], ["produce", "request"],
    ["simulate"], ["consume"], ["dlq"], ["dlq", "list"], ["dlq", "show"], ["dlq", "replay"],
    ["orders"], ["orders", "follow"], ["orders", "show"],
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_produce_each_message_and_consume_it_decoded(deployment):
    names = deployment.names
    deployment.cli("produce", "ping", "--driver-id", "drv_{i}", "--lat", "6.5244", "--lng", "3.3792", "--count", "3",
                   "--speed-mps", "8.5", "--format", "avro")
    deployment.cli("produce", "status", "--driver-id", "drv_0", "--online", "--eligibility", "ACTIVE")
    deployment.cli("produce", "trip", "--order-id", "ord_1", "--driver-id", "drv_0", "--status", "delivered")
    produced = deployment.cli("produce", "request", "--order-id", "ord_{i}", "--restaurant", "40.7128,-74.006",
                              "--customer", "40.7589,-73.9851", "--prep-min", "15", "--items", '[{"name":"pizza"}]',
                              "--count", "2", "--format", "avro")
    assert "produced 2 of 2 records (avro)" in produced.stdout
    assert f"{names.requests('4_-7')}[" in produced.stdout

    pings = json_lines(deployment.cli("consume", "driver_locations.0_0", "--from-beginning", "--count", "3").stdout)
    assert sorted(p["key"] for p in pings) == ["drv_0", "drv_1", "drv_2"]
    assert all(p["value"]["speed_mps"] == 8.5 and p["topic"] == names.locations("0_0") for p in pings)
    # a whole regional family is followed by pattern
    requests = json_lines(deployment.cli("consume", "driver_assignment.requests", "--from-beginning",
                                         "--count", "2").stdout)
    assert sorted(r["value"]["orderId"] for r in requests) == ["ord_0", "ord_1"]
    assert requests[0]["value"]["items"] == [{"name": "pizza"}] and requests[0]["value"]["geoKey"] == "4_-7"
    status = json_lines(deployment.cli("consume", "driver_status", "--from-beginning", "--count", "1").stdout)
    assert status[0]["value"]["online"] is True and status[0]["key"] == "drv_0"
    trips = json_lines(deployment.cli("consume", "trip_events", "--from-beginning", "--count", "1").stdout)
    assert trips[0]["key"] == "drv_0" and trips[0]["value"]["status"] == "delivered"
    idle = deployment.cli("consume", "driver_presence", "--idle-exit", "1")
    assert idle.stdout == "" and "0 record(s)" in idle.stderr


def test_exit_codes_scripts_can_trust(deployment):
    unreachable = deployment.cli("produce", "status", "--driver-id", "d", "--online", check=False,
                                 KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert unreachable.returncode == 3 and "cannot reach Kafka" in unreachable.stderr
    bad_usage = deployment.cli("produce", "ping", "--driver-id", "d", "--lat", "95", "--lng", "0", check=False)
    assert bad_usage.returncode == 2
    missing = deployment.cli("dlq", "show", "12345", check=False)
    assert missing.returncode == 1 and "no dead letter" in missing.stderr
    no_topic = deployment.cli("consume", "no_such_topic", check=False)
    assert no_topic.returncode == 3


def dlq_rows(deployment, *filters: str) -> list[dict]:
    return json_lines(deployment.cli("dlq", "list", "--json", *filters).stdout)


def end_offset_total(deployment, topic: str) -> int:
    return len(deployment.read(topic, 10_000, timeout=3))


def test_malformed_simulated_records_are_dead_lettered_filtered_and_replayed_once_fixed(deployment, tmp_path):
    names = deployment.names
    worker = deployment.start_worker("w1")
    worker.wait_ready()
    results = tmp_path / "run"
    deployment.cli("simulate", "--city", "new-york", "--drivers", "6", "--orders-per-s", "0.5", "--duration", "20",
                   "--pace", "max", "--malformed-fraction", "0.3", "--seed", "1", "--run-id", "t-",
                   "--results", str(results), "--settle", "10")
    malformed = json.loads((results / "summary.json").read_text())["sent"]["malformed"]
    assert malformed == {"missing_field": 16, "not_json": 9, "future_ts": 4, "no_order_id": 2, "wrong_type": 7}
    total = sum(malformed.values())

    letters = wait_for(lambda: (lambda rows: rows if len(rows) >= total else None)(dlq_rows(deployment)),
                       timeout=60, message=f"{total} dead letters")
    assert len(letters) == total
    # filters select what they say
    skewed = dlq_rows(deployment, "--error-class", "InvalidEvent")
    assert len(skewed) == malformed["future_ts"]
    assert all("in the future" in row["error_message"] for row in skewed)
    requests = dlq_rows(deployment, "--topic", "driver_assignment.requests.*")
    assert len(requests) == malformed["no_order_id"] and {r["stage"] for r in requests} == {"assignment"}
    assert len(dlq_rows(deployment, "--stage", "sessions", "--topic", names.locations("4_-7"))) == total - 2
    assert len(dlq_rows(deployment, "--since", "10m", "--error-class", "InvalidMessage")) == total - 4
    assert dlq_rows(deployment, "--until", "1h") == []
    assert dlq_rows(deployment, "--error-class", "NoSuchError") == []
    table = deployment.cli("dlq", "list", "--error-class", "InvalidEvent").stdout
    assert table.startswith("OFFSET") and f"{malformed['future_ts']} dead letter(s)" in table

    tailed = json_lines(deployment.cli("consume", "dispatch.dlq", "--from-beginning", "--count", str(total)).stdout)
    assert len(tailed) == total
    assert sum("value" in row for row in tailed) == malformed["future_ts"]  # decodable as LocationPing
    assert all(row["headers"][dl.ORIGINAL_TOPIC].startswith(names.prefix) for row in tailed)

    shown = deployment.cli("dlq", "show", str(skewed[0]["offset"])).stdout
    assert f"{dl.ORIGINAL_TOPIC}: {names.locations('4_-7')}" in shown
    assert "value (LocationPing, decodes now)" in shown

    pings_before = end_offset_total(deployment, names.locations("4_-7"))
    dry = deployment.cli("dlq", "replay", "--error-class", "InvalidEvent", "--dry-run").stdout
    assert f"{malformed['future_ts']} to replay" in dry and dry.count("would replay") == malformed["future_ts"]
    assert end_offset_total(deployment, names.locations("4_-7")) == pings_before

    # the cause: the drivers' clocks ran 15 minutes ahead; the operator widens the tolerance and replays
    worker.stop()
    fixed = deployment.start_worker("w2", GEODISPATCH_MAX_FUTURE_SKEW_S="7200")
    fixed.wait_ready()
    replay = deployment.cli("dlq", "replay", "--error-class", "InvalidEvent", "--rate", "50")
    assert f"replayed {malformed['future_ts']} of {malformed['future_ts']}" in replay.stdout

    replayed = [r for r in deployment.read(names.locations("4_-7"), pings_before + 4, timeout=10)
                if dict(r.headers or ()).get(dl.REPLAYED_FROM)]
    assert len(replayed) == malformed["future_ts"]
    originals = {row["id"]: row for row in skewed}
    for record in replayed:
        letter_id = dict(record.headers)[dl.REPLAYED_FROM].decode()
        assert letter_id in originals and record.key.decode() == originals[letter_id]["key"]
    # processed: each replayed driver's session now holds its latest replayed (future) position
    latest: dict[str, str] = {}
    for record in replayed:
        latest[record.key.decode()] = max(latest.get(record.key.decode(), ""), json.loads(record.value)["ts"])
    for driver, ts in latest.items():
        def holds_replayed_ping(d=driver, t=ts) -> bool:
            status, session = fixed.get(f"/driver-sessions/sessions/{d}")
            return status == 200 and (session["last_loc"] or {}).get("ts", "")[:19] == t[:19]

        wait_for(holds_replayed_ping, timeout=30, message=f"{driver} to take the replayed ping")
    time.sleep(2)
    assert len(dlq_rows(deployment)) == total  # nothing failed again

    second = deployment.cli("dlq", "replay", "--error-class", "InvalidEvent").stdout
    assert "replayed 0" in second and f"{malformed['future_ts']} replayed before" in second
    assert end_offset_total(deployment, names.locations("4_-7")) == pings_before + malformed["future_ts"]
    listed = dlq_rows(deployment, "--error-class", "InvalidEvent")
    assert all(row["replayed"] for row in listed)

    # --to another topic, --limit: one record, byte for byte, and remembered
    to_other = deployment.cli("dlq", "replay", "--error-class", "InvalidMessage", "--topic", "driver_locations.*",
                              "--limit", "1", "--to", names.presence).stdout
    assert "replayed 1 of 1" in to_other
    # the worker writes presence changes there too: ours is the one naming a dead letter
    [copy] = [r for r in deployment.read(names.presence, 10_000, timeout=5) if dl.REPLAYED_FROM in dict(r.headers)]
    source = next(row for row in dlq_rows(deployment) if row["id"] == dict(copy.headers)[dl.REPLAYED_FROM].decode())
    assert copy.key.decode() == source["key"] and source["error_class"] == "InvalidMessage"
