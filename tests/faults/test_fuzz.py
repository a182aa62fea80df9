"""Bad input at scale, through a running worker: waves of malformed, mutated, huge and oddly keyed
records interleaved with good ones on every input topic. Afterwards every record is reconciled with
what the contract requires of it: dead-lettered (with every header and its exact bytes, found by the
dlq.original.* coordinates), answered (exactly as often as it was sent), applied (the driver's session
shows it) or ignored (a stale or duplicate ping, counted); the worker never crashed or stalled.
`make test` runs a short form; GEODISPATCH_FAULTS_FULL=1 a longer one; GEODISPATCH_FUZZ_SEED picks
the seed (printed, so a failure can be replayed)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
import urllib.parse
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from infra.settings import Settings
from producers.publisher import Publisher, RecordTooLarge
from schemas import dead_letter as dl
from schemas.codec import default_codec
from schemas.models import AssignmentRequested, AssignmentResponse
from streams.logic.assignment import NO_DRIVERS
from streams.routing import REROUTED_FROM, key_partition
from tests.faults import fuzz
from tests.faults.fuzz import ANSWERED, APPLIED, DEAD_LETTERED, IGNORED, Case
from tests.integration.harness import BOOTSTRAP, Deployment, WorkerProcess

FULL = os.environ.get("GEODISPATCH_FAULTS_FULL") == "1"
SEED = int(os.environ.get("GEODISPATCH_FUZZ_SEED", "20261125"))
WAVES, BAD_PER_FAMILY = (12, 150) if FULL else (3, 25)
GOOD_DRIVERS, GOOD_REQUESTS = 12, 5  # per run; good requests per wave
CONTRACT_HEADERS = (dl.ORIGINAL_TOPIC, dl.ORIGINAL_PARTITION, dl.ORIGINAL_OFFSET, dl.ORIGINAL_TIMESTAMP, dl.STAGE,
                    dl.ERROR_CLASS, dl.ERROR_MESSAGE, dl.ATTEMPTS, dl.FAILED_AT)
CASE_HEADER = "fuzz-case"
BROKER_LIMIT = 1_048_588  # message.max.bytes in infra/kafka/server.properties.in
MISSED_HEARTBEATS = 100_000  # of the harness's 1 s interval: nobody alive times out during the run
HEARTBEAT_TIMEOUT_MS = MISSED_HEARTBEATS * 1000
SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@pytest.fixture
def deployment(tmp_path):
    dep = Deployment(workdir=tmp_path)
    # Nobody times out or goes stale while the run lasts: what is checked is bad input, not liveness.
    dep.extra_env.update(GEODISPATCH_MISSED_HEARTBEATS=str(MISSED_HEARTBEATS), GEODISPATCH_LOCATION_MAX_AGE_S="600")
    dep.apply_topics()
    yield dep
    dep.cleanup()


# -- building the waves -----------------------------------------------------------------------------


def _interleave(rng: random.Random, streams: list[list[Case]]) -> list[Case]:
    """One random order of all cases that keeps each stream's own order (one driver's pings)."""
    streams = [list(s) for s in streams if s]
    merged: list[Case] = []
    while streams:
        stream = rng.choice(streams)
        merged.append(stream.pop(0))
        if not stream:
            streams.remove(stream)
    return merged


def _good_drivers() -> list[str]:
    return [f"fz{SEED}_good{n}" for n in range(GOOD_DRIVERS)]


def _warm_up(gen: fuzz.Generator) -> list[Case]:
    cases = []
    for n, driver in enumerate(_good_drivers()):
        fmt = "avro" if n % 2 else "json"
        cases.append(gen.good_record(fuzz.STATUS, driver, fmt))
        cases.append(_good_ping(gen, driver, fmt, gen.now - timedelta(seconds=30)))
    return cases


def _good_ping(gen: fuzz.Generator, driver: str, fmt: str, at: datetime) -> Case:
    lat, lng = fuzz._near(gen.rng)
    return gen.good_record(fuzz.LOCATIONS, driver, fmt, lat=lat, lng=lng, ts=fuzz.iso(at))


def _wave(gen: fuzz.Generator, number: int, deliveries: list[Case]) -> list[Case]:
    rng = gen.rng
    streams: list[list[Case]] = [[delivery] for delivery in deliveries]
    for family in (fuzz.LOCATIONS, fuzz.STATUS, fuzz.TRIPS, fuzz.REQUESTS):
        streams += [[gen.bad(family)] for _ in range(BAD_PER_FAMILY)]
        if number == 0:
            streams.append([gen.bad(family, fuzz.huge_valid)])
            if family in (fuzz.LOCATIONS, fuzz.REQUESTS):
                streams.append([gen.bad(family, fuzz.huge_garbage)])
    for n, driver in enumerate(_good_drivers()):
        fmt = rng.choice(["json", "avro"])
        at = gen.now - timedelta(seconds=20 - number - n / 100)
        ping = _good_ping(gen, driver, fmt, at)
        stream = [ping]
        if rng.random() < 0.3:  # the same ping again, or an older one overtaken by it: both stale
            again = Case(**{**ping.__dict__, "kind": "duplicate-ping", "good": False})
            older = _good_ping(gen, driver, fmt, at - timedelta(seconds=5))
            older.kind, older.good = "older-ping", False
            stream.append(rng.choice([again, older]))
        streams.append(stream)
    for n in range(GOOD_REQUESTS):
        order = f"fz{SEED}_order{number}_{n}"
        request = gen.good_record(fuzz.REQUESTS, order, rng.choice(["json", "avro"]))
        stream = [request]
        if n == 0:  # the order service sends it again: answered again, the same way
            stream.append(Case(**{**request.__dict__, "kind": "repeated-request", "good": False}))
        streams.append(stream)
    return _interleave(rng, streams)


def _deliveries(gen: fuzz.Generator, answers: list[AssignmentResponse], delivered: set[str]) -> list[Case]:
    """Good trip events: each order assigned to a good driver is delivered, so the driver is free again."""
    cases = []
    for answer in answers:
        if answer.status == "assigned" and answer.orderId not in delivered and answer.driverId.startswith(
                f"fz{SEED}_good"):
            delivered.add(answer.orderId)
            cases.append(gen.good_record(fuzz.TRIPS, answer.driverId, gen.rng.choice(["json", "avro"]),
                                         orderId=answer.orderId, status="delivered", ts=fuzz.iso(gen.now)))
    return cases


# -- sending and reading ----------------------------------------------------------------------------


def _send(dep: Deployment, cases: list[Case], rng: random.Random, first_index: int) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True,
                                    linger_ms=5, max_request_size=fuzz.NEAR_BROKER_LIMIT + 500)
        await producer.start()
        try:
            pending = []
            for index, case in enumerate(cases, start=first_index):
                region = fuzz.REGION if case.good or case.family in (fuzz.STATUS, fuzz.TRIPS) or \
                    case.expect != DEAD_LETTERED else rng.choice(dep.regions)
                case.topic = fuzz.topic_of(dep.names, case.family, region)
                routing_key = case.key or (case.subject or "").encode()
                partition = key_partition(routing_key, dep.partitions) if routing_key else 0
                headers: list[tuple[str, bytes | None]] = [(CASE_HEADER, str(index).encode())]
                if not case.good and case.expect not in (IGNORED, APPLIED) and rng.random() < 0.1:
                    # On another partition than its key's: a valid request is rerouted, a bad record
                    # dead-lettered from where it is. Not a valid ping or status: its copy would reach
                    # its partition behind the driver's later records, so which of them is stale would
                    # depend on timing, not on the input (test_sessions covers rerouting those).
                    partition, case.misrouted = (partition + 1) % dep.partitions, True
                if not case.good and rng.random() < 0.1:
                    # Headers the dead letter must keep as they are, or replace with its own (dlq.*).
                    headers += [("x-null", None), ("x-empty", b""), (dl.STAGE, b"spoofed"),
                                (dl.ORIGINAL_OFFSET, b"999999")]
                case.timestamp_ms = int(time.time() * 1000)
                case.headers = tuple(headers)  # type: ignore[arg-type]
                pending.append(await producer.send(case.topic, case.value, key=case.key, partition=partition,
                                                   timestamp_ms=case.timestamp_ms, headers=list(case.headers)))
            for case, future in zip(cases, pending, strict=True):
                metadata = await future
                case.partition, case.offset = metadata.partition, metadata.offset
        finally:
            await producer.stop()

    asyncio.run(send())


def _healthy(worker: WorkerProcess, problems: list[str]) -> None:
    if worker.process.poll() is not None:
        raise AssertionError(f"the worker exited with {worker.process.returncode}:\n{worker.log()[-4000:]}")
    try:
        status, body = worker.get("/health")
    except OSError as exc:
        problems.append(f"/health unreachable: {exc}")
        return
    if status != 200:
        problems.append(f"/health answered {status}: {body}")


def _answers(dep: Deployment) -> list[AssignmentResponse]:
    codec = default_codec()
    return [codec.decode(AssignmentResponse, r.value) for r in dep.read_all(dep.names.responses)]


def _wait(worker: WorkerProcess, problems: list[str], done, timeout: float, what: str, stop: bool = True) -> None:
    """Until done(), checking /health meanwhile; a timeout fails at once, or (stop=False) is noted and
    left to the checks to explain record by record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _healthy(worker, problems)
        if done():
            return
        time.sleep(0.5)
    if stop:
        raise AssertionError(f"the worker stalled: no {what} within {timeout:.0f}s\n{worker.log()[-3000:]}")
    problems.append(f"no {what} within {timeout:.0f}s")


def _session(worker: WorkerProcess, driver: str) -> tuple[int, dict]:
    status, body = worker.get(f"/driver-sessions/sessions/{urllib.parse.quote(driver, safe='')}")
    return status, body if isinstance(body, dict) else {}


def _stale_pings(worker: WorkerProcess) -> int:
    status, text = worker.get("/metrics")
    found = re.search(r'^geodispatch_pings_total\{outcome="stale"\} ([0-9.e+]+)$', str(text), re.M)
    return int(float(found.group(1))) if found else 0


# -- the checks -------------------------------------------------------------------------------------


def _check_dead_letters(dep: Deployment, cases: list[Case], failures: list[str]) -> Counter:
    by_coordinates = {(c.topic, c.partition, c.offset): c for c in cases}
    seen: Counter = Counter()
    classes: Counter = Counter()
    for letter in dep.read_all(dep.names.dlq):
        headers = dl.header_dict(letter.headers)
        missing = [h for h in CONTRACT_HEADERS if h not in headers]
        if missing:
            failures.append(f"dead letter at offset {letter.offset} lacks {missing}")
            continue
        where = (headers[dl.ORIGINAL_TOPIC], int(headers[dl.ORIGINAL_PARTITION]), int(headers[dl.ORIGINAL_OFFSET]))
        case = by_coordinates.get(where)
        if case is None and REROUTED_FROM in headers:  # failed after a reroute: these are the copy's coordinates
            partition, _, offset = headers[REROUTED_FROM].partition("@")
            case = by_coordinates.get((where[0], int(partition), int(offset)))
            where = (where[0], int(partition), int(offset))
        if case is None:
            failures.append(f"dead letter for a record never sent: {where}")
            continue
        seen[where] += 1
        classes[headers[dl.ERROR_CLASS]] += 1
        label = f"{case.kind} ({case.family}) at {where}"
        if case.expect != DEAD_LETTERED:
            failures.append(f"{label} was dead-lettered ({headers[dl.ERROR_MESSAGE][:120]}), expected {case.expect}")
        # A copy rerouted to its key's partition carries the key it should have had (a null key
        # becomes the driver's or order's id); everything else is the original's.
        rerouted_key = case.key if REROUTED_FROM not in headers or case.key else (case.subject or "").encode()
        if letter.key != rerouted_key or letter.value != case.value:
            failures.append(f"{label}: the dead letter's key or value differs from the original's")
        own = [(name, value or b"") for name, value in case.headers if not name.startswith(dl.PREFIX)]
        kept = [(name, value or b"") for name, value in letter.headers
                if not name.startswith(dl.PREFIX) and name != REROUTED_FROM]
        if kept != own:
            failures.append(f"{label}: the record's own headers {own} came back as {kept}")
        if sum(name == dl.STAGE for name, _ in letter.headers) != 1:
            failures.append(f"{label}: a dlq.* header of the original record was kept beside ours")
        # Faust holds a record's time as float seconds: a millisecond may be lost on the way back.
        if abs(int(headers[dl.ORIGINAL_TIMESTAMP]) - case.timestamp_ms) > 1:
            failures.append(f"{label}: dlq.original.timestamp {headers[dl.ORIGINAL_TIMESTAMP]} != {case.timestamp_ms}")
        stage = "assignment" if case.family == fuzz.REQUESTS else "sessions"
        if headers[dl.STAGE] != stage or headers[dl.ATTEMPTS] != "1" or not headers[dl.ERROR_MESSAGE]:
            failures.append(f"{label}: stage {headers[dl.STAGE]}, attempts {headers[dl.ATTEMPTS]}")
        if headers[dl.ERROR_CLASS] not in ("InvalidMessage", "InvalidEvent"):
            failures.append(f"{label}: failed with {headers[dl.ERROR_CLASS]}: {headers[dl.ERROR_MESSAGE][:200]} "
                            "(an unforeseen error, not a refusal)")
        datetime.fromisoformat(headers[dl.FAILED_AT].replace("Z", "+00:00"))
    for case in cases:
        where = (case.topic, case.partition, case.offset)
        if case.expect == DEAD_LETTERED and seen[where] != 1:
            failures.append(f"{case.kind} ({case.family}) at {where}: dead-lettered {seen[where]} times, expected once")
    return classes


def _check_answers(answers: list[AssignmentResponse], cases: list[Case], failures: list[str]) -> Counter:
    expected: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        if case.expect == ANSWERED:
            expected[case.subject].append(case)  # type: ignore[index]
    got: dict[str, list[AssignmentResponse]] = defaultdict(list)
    for answer in answers:
        got[answer.orderId].append(answer)
    outcomes: Counter = Counter()
    for order, sent in expected.items():
        answered = got.get(order, [])
        if len(answered) != len(sent):
            failures.append(f"order {order[:60]!r} ({sent[0].kind}) sent {len(sent)}x, answered {len(answered)}x")
            continue
        if len({(a.status, a.driverId, a.error) for a in answered}) > 1:
            failures.append(f"order {order[:60]!r} answered differently: {answered}")
        answer, error = answered[0], sent[0].error
        outcomes[answer.status if answer.status == "assigned" else answer.error.split(":")[0]] += 1
        if error is None:
            if answer.status != "assigned" and answer.error != NO_DRIVERS:
                failures.append(f"order {order!r} ({sent[0].kind}) is valid but failed: {answer.error}")
        elif answer.status != "failed" or not (answer.error or "").startswith(error):
            failures.append(f"order {order[:60]!r} ({sent[0].kind}): expected failed {error!r}, got {answer}")
    for order in set(got) - set(expected):
        failures.append(f"answer for {order[:60]!r}, which was not to be answered: {got[order][0]}")
    return outcomes


def _check_sessions(worker: WorkerProcess, cases: list[Case], failures: list[str]) -> int:
    """Every driver shows its last applied ping, status and trip; drivers of dead letters have none."""
    positions = fuzz.final_positions(cases)
    applied: dict[str, dict] = defaultdict(dict)
    touched = {c.subject for c in cases if c.expect in (APPLIED, IGNORED)}
    timed_out_before = int(time.time() * 1000) - HEARTBEAT_TIMEOUT_MS
    for case in cases:
        if case.expect == APPLIED and case.family in (fuzz.STATUS, fuzz.TRIPS):
            applied[case.subject].update(case.fields)  # type: ignore[index]
            if case.fields.get("online") and (case.ts_ms or 0) < timed_out_before:
                # Online as of long ago (a number read as epoch seconds, say): the heartbeat check
                # rightly takes the driver offline again.
                del applied[case.subject]["online"]
    checked = 0
    for driver in sorted(set(positions) | set(applied)):
        if not SAFE_ID.match(driver):
            continue  # an id a URL path cannot carry plainly (bit-flipped into it); counted, not looked up
        status, session = _session(worker, driver)
        checked += 1
        if status != 200:
            failures.append(f"{driver}: no session ({status}) though records of it were applied")
            continue
        if driver in positions:
            loc = session.get("last_loc") or {}
            if (loc.get("lat"), loc.get("lng")) != positions[driver]:
                failures.append(f"{driver} is at {loc.get('lat')},{loc.get('lng')}, its last ping {positions[driver]}")
        want = applied.get(driver, {})
        if driver.startswith(f"fz{SEED}_good"):
            want = {"online": True, "eligibility": "ACTIVE"}  # trips come and go with the assignments
        if "online" in want and session.get("online") != want["online"]:
            failures.append(f"{driver}: online {session.get('online')}, its status said {want['online']}")
        if "eligibility" in want and session["eligibility"]["status"] != want["eligibility"]:
            failures.append(f"{driver}: eligibility {session['eligibility']}, its status said {want['eligibility']}")
        if "trip_id" in want and session.get("trip_id") != want["trip_id"]:
            failures.append(f"{driver}: trip_id {session.get('trip_id')!r}, its trip event said {want['trip_id']!r}")
    for case in cases:
        if case.expect == DEAD_LETTERED and case.family != fuzz.REQUESTS and case.subject not in touched \
                and SAFE_ID.match(case.subject or ""):
            status, _ = _session(worker, case.subject)  # type: ignore[arg-type]
            checked += 1
            if status != 404:
                failures.append(f"{case.subject}: has a session, but its one record ({case.kind}) was dead-lettered")
    return checked


def _table(cases: list[Case], classes: Counter, outcomes: Counter, stale: int, checked: int) -> str:
    rows: dict[str, object] = {"seed": SEED}
    for family in (fuzz.LOCATIONS, fuzz.STATUS, fuzz.TRIPS, fuzz.REQUESTS):
        mine = [c for c in cases if c.family == family]
        counts = Counter(c.expect for c in mine)
        rows[f"{family}: sent (good)"] = f"{len(mine)} ({sum(c.good for c in mine)})"
        rows[f"{family}: dead-lettered / answered / applied / ignored"] = " / ".join(
            str(counts[o]) for o in (DEAD_LETTERED, ANSWERED, APPLIED, IGNORED))
    rows["sent"] = len(cases)
    rows["dead-lettered"] = sum(classes.values())
    for name, count in sorted(classes.items()):
        rows[f"  by {name}"] = count
    rows["answered (records / orders)"] = f"{sum(c.expect == ANSWERED for c in cases)} / {sum(outcomes.values())}"
    for name, count in sorted(outcomes.items()):
        rows[f"  {name}"] = count
    rows["applied"] = sum(c.expect == APPLIED for c in cases)
    rows["ignored (stale pings counted)"] = stale
    rows["sent to another partition"] = sum(c.misrouted for c in cases)
    rows["sent with null/empty/dlq.* headers"] = sum(len(c.headers) > 1 for c in cases)
    rows["sessions looked up"] = checked
    rows["mutations"] = len({c.kind.split(":")[0] for c in cases})
    width = max(len(k) for k in rows)
    return "bad input at scale\n" + "\n".join(f"  {k:<{width}}  {v:>12}" for k, v in rows.items())


def test_bad_input_at_scale(deployment):
    dep = deployment
    worker = dep.start_worker()
    worker.wait_ready(90)
    gen = fuzz.Generator(SEED)
    rng = random.Random(SEED + 1)
    problems: list[str] = []
    cases = _warm_up(gen)
    _send(dep, cases, rng, 0)
    _wait(worker, problems, lambda: all(_session(worker, d)[1].get("online") for d in _good_drivers()), 60,
          "good driver online")
    delivered: set[str] = set()
    for number in range(WAVES):
        gen.now = datetime.now(UTC)
        wave = _wave(gen, number, _deliveries(gen, _answers(dep), delivered))
        _send(dep, wave, rng, len(cases))
        cases += wave
        orders = {c.subject for c in wave if c.good and c.family == fuzz.REQUESTS}
        _wait(worker, problems, lambda o=orders: o <= {a.orderId for a in _answers(dep)}, 90,
              f"answer to wave {number}'s good requests")
    fuzz.sequence_pings(cases)

    expected_answers = sum(c.expect == ANSWERED for c in cases)
    expected_letters = sum(c.expect == DEAD_LETTERED for c in cases)
    _wait(worker, problems, lambda: len(_answers(dep)) >= expected_answers
          and len(dep.read_all(dep.names.dlq)) >= expected_letters, 90,
          f"{expected_answers} answers and {expected_letters} dead letters", stop=False)
    positions = fuzz.final_positions(cases)
    _wait(worker, problems, lambda: all(
        (lambda s: (s.get("last_loc") or {}).get("lat") == positions[d][0])(_session(worker, d)[1])
        for d in _good_drivers()), 30, "good drivers' last positions", stop=False)
    time.sleep(1)  # anything beyond what was expected would show up now

    failures: list[str] = []
    classes = _check_dead_letters(dep, cases, failures)
    outcomes = _check_answers(_answers(dep), cases, failures)
    checked = _check_sessions(worker, cases, failures)
    stale = _stale_pings(worker)
    if stale != sum(c.expect == IGNORED for c in cases):
        failures.append(f"{stale} stale pings counted, {sum(c.expect == IGNORED for c in cases)} sent")
    if outcomes["assigned"] == 0:
        failures.append("no request was assigned: the good requests never met the good drivers")
    log = worker.log()
    for marker in ("Crashed", "processing_failed"):
        if marker in log:
            failures.append(f"the worker's log has {marker!r}: " + log[log.index(marker) - 200:][:1500])
    _healthy(worker, problems)
    print("\n" + _table(cases, classes, outcomes, stale, checked))
    assert not failures and not problems, (
        f"{len(failures)} failures (seed {SEED}):\n" + "\n".join(problems[:10] + failures[:30]))


def test_producer_refuses_a_record_over_the_broker_limit(deployment):
    """The publishing library refuses, with the sizes and what to do, a record the broker would refuse
    (message.max.bytes, about 1 MiB); nothing reaches the topic."""
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP, topic_prefix=deployment.prefix)
    request = AssignmentRequested(orderId="fz_too_big", restaurantLatitude=40.71, restaurantLongitude=-74.0,
                                  customerLatitude=40.72, customerLongitude=-74.0,
                                  specialInstructions="x" * 1_048_600)

    async def publish() -> list[str]:
        errors = []
        async with Publisher(settings) as publisher:
            for attempt in (lambda: publisher.publish(request),
                            lambda: publisher.send_raw(deployment.names.requests(fuzz.REGION), b"k",
                                                       b"x" * (BROKER_LIMIT + 1))):
                with pytest.raises(RecordTooLarge) as refused:
                    await attempt()
                errors.append(str(refused.value))
            assert publisher.tally.sent == 0
        return errors

    errors = asyncio.run(publish())
    for error in errors:
        assert "over the 1048576-byte limit" in error and "message.max.bytes" in error, error
    assert "fz_too_big" in errors[0] and deployment.names.requests(fuzz.REGION) in errors[0]
    assert deployment.read(deployment.names.requests(fuzz.REGION), 1, timeout=3) == []
