"""The DLQ tools and `consume` read only what they are asked for, on the real broker: `--since`/`--until`
seek by time, `--partition`/`--offset` by position, `--limit` alone reads back from the end, `show` reads
its one record; a replay streams and keeps its ledger in the compacted topic dispatch.dlq_replays, which
outlives Redis (a Redis ledger of before moves there); and `dlq list --since 10m` among a million dead
letters answers in under a second (bench/dlq_scale.py times it more thoroughly)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from infra.clients import committed_offsets
from infra.settings import Settings
from schemas import dead_letter as dl
from tests.integration.harness import wait_for

OLD, RECENT = 3000, 30


def moment(n: int, now: datetime) -> datetime:
    """When dead letter n failed: the old ones from two days to an hour ago, the recent in the last 5 min
    (before `now`, the test's own start: a time taken when the module is imported is minutes old by then
    in a whole suite)."""
    if n < OLD:
        return now - timedelta(days=2) + (timedelta(days=2) - timedelta(hours=1)) * (n / OLD)
    return now - timedelta(minutes=5) + timedelta(minutes=4) * ((n - OLD) / RECENT)


def write(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, datetime, list[tuple[str, bytes]]]],
          partition: int = 0) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        await producer.start()
        try:
            for key, value, at, headers in records:
                await producer.send(topic, value, key=key, partition=partition, headers=headers,
                                    timestamp_ms=int(at.timestamp() * 1000))
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(send())


def dead_letters(deployment, count: int, now: datetime, first: int = 0) -> None:
    origin = deployment.names.status
    records = []
    for n in range(first, first + count):
        at = moment(n, now)
        source = dl.SourceRecord(origin, 0, n, int(at.timestamp() * 1000), f"drv_{n}".encode(),
                                 json.dumps({"driver_id": f"drv_{n}", "online": "maybe"}).encode())
        records.append((source.key, source.value, at,
                        dl.dead_letter_headers(source, "sessions", ValueError(f"bad {n}"), 1, at)))
    write(deployment.bootstrap, deployment.names.dlq, records)


def rows(deployment, *args: str) -> list[dict]:
    out = deployment.cli("dlq", "list", "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def ledger(deployment) -> dict[str, dict]:
    return {record.key.decode(): orjson.loads(record.value)
            for record in deployment.read_all(deployment.names.dlq_replays)}


def test_list_show_and_replay_seek_and_the_ledger_outlives_redis(deployment):
    now = datetime.now(UTC)
    dead_letters(deployment, OLD + RECENT, now)
    names = deployment.names

    recent = rows(deployment, "--since", "10m")
    assert [row["offset"] for row in recent] == list(range(OLD, OLD + RECENT))
    since, until = now - timedelta(hours=3), now - timedelta(minutes=90)
    window = rows(deployment, "--since", since.isoformat(), "--until", until.isoformat())
    assert [row["offset"] for row in window] == [n for n in range(OLD) if since <= moment(n, now) < until]
    assert [row["offset"] for row in rows(deployment, "--limit", "5")] == list(range(OLD + RECENT - 5, OLD + RECENT))
    assert [row["offset"] for row in rows(deployment, "--limit", "3", "--since", "10m")] == [
        OLD + RECENT - 3, OLD + RECENT - 2, OLD + RECENT - 1]
    assert [row["offset"] for row in rows(deployment, "--offset", str(OLD + RECENT - 4))] == list(
        range(OLD + RECENT - 4, OLD + RECENT))
    assert deployment.cli("dlq", "list", "--partition", "3", check=False).returncode == 3  # the DLQ has one

    shown = deployment.cli("dlq", "show", "1500", "--partition", "0").stdout
    assert f"dead letter {names.dlq}:0:1500" in shown and f"{dl.ORIGINAL_OFFSET}: 1500" in shown
    assert f"{dl.ERROR_STACKTRACE}:" in shown and "ValueError: bad 1500" in shown
    assert deployment.cli("dlq", "show", str(OLD + RECENT), check=False).returncode == 1

    first = deployment.cli("dlq", "replay", "--since", "10m", "--limit", "10", "--to", names.presence).stdout
    assert "replayed 10 of 10" in first and "--limit reached" in first
    copies = deployment.read(names.presence, 10)
    assert sorted(dict(r.headers)[dl.REPLAYED_FROM].decode() for r in copies) == [
        f"{names.dlq}:0:{n}" for n in range(OLD, OLD + 10)]
    assert all(dl.ERROR_STACKTRACE not in dict(r.headers) for r in copies)
    assert set(ledger(deployment)) == {f"{names.dlq}:0:{n}" for n in range(OLD, OLD + 10)}

    rest = deployment.cli("dlq", "replay", "--since", "10m", "--to", names.presence).stdout
    assert f"replayed {RECENT - 10} of {RECENT - 10}" in rest and "10 replayed before" in rest

    # Redis emptied (restarted without persistence): the ledger is in the topic, nothing goes twice
    client = deployment.redis(decode_responses=False)
    stale = list(client.scan_iter(match=f"{deployment.redis_prefix}*"))
    if stale:
        client.delete(*stale)
    again = deployment.cli("dlq", "replay", "--since", "10m", "--to", names.presence).stdout
    assert "replayed 0 of 0" in again and f"{RECENT} replayed before" in again
    assert all(row["replayed"] for row in rows(deployment, "--since", "10m"))
    assert len(deployment.read_all(names.presence)) == RECENT
    forced = deployment.cli("dlq", "replay", "--offset", str(OLD + RECENT - 1), "--again", "--to", names.presence)
    assert "replayed 1 of 1" in forced.stdout


def test_a_redis_ledger_of_before_moves_into_the_topic(deployment):
    dead_letters(deployment, 3, datetime.now(UTC), first=OLD)
    names = deployment.names
    key = deployment.redis_keys.dlq_replayed(names.dlq)
    client = deployment.redis(decode_responses=False)
    client.hset(key, f"{names.dlq}:0:0", orjson.dumps({"to": "x", "at": "then", "fingerprint": "f"}))
    listed = rows(deployment)
    assert [row["replayed"] for row in listed] == [True, False, False]

    replay = deployment.cli("dlq", "replay", "--to", names.presence).stdout
    assert "replayed 2 of 2" in replay and "1 replayed before" in replay
    assert not client.exists(key)
    assert set(ledger(deployment)) == {f"{names.dlq}:0:{n}" for n in range(3)}
    assert "replayed 0 of 0" in deployment.cli("dlq", "replay", "--to", names.presence).stdout


def test_consume_seeks_by_partition_offset_and_time_and_commits_as_a_group(deployment):
    names, now = deployment.names, datetime.now(UTC)
    old, new = now - timedelta(hours=1), now - timedelta(minutes=2)
    records = [(f"drv_{n}".encode(), json.dumps({"driver_id": f"drv_{n}", "online": True, "ts": now.isoformat()})
                .encode(), old if n < 5 else new, []) for n in range(10)]
    write(deployment.bootstrap, names.status, records, partition=1)

    def offsets(*args: str) -> list[int]:
        out = deployment.cli("consume", "driver_status", *args).stdout
        return [json.loads(line)["offset"] for line in out.splitlines() if line.startswith("{")]

    assert offsets("--partition", "1", "--offset", "3", "--count", "4") == [3, 4, 5, 6]
    assert offsets("--from-time", "10m", "--idle-exit", "2") == [5, 6, 7, 8, 9]
    assert offsets("--partition", "0", "--from-beginning", "--idle-exit", "2") == []
    group = f"{deployment.prefix}ops"
    assert offsets("--group", group, "--from-beginning", "--count", "4") == [0, 1, 2, 3]
    tp = TopicPartition(names.status, 1)
    settings = Settings(kafka_bootstrap_servers=deployment.bootstrap)
    assert asyncio.run(committed_offsets(settings, group, [tp])) == {tp: 4}
    # where the group left off, subscribed as a member of it
    assert offsets("--group", group, "--count", "3", "--idle-exit", "30") == [4, 5, 6]
    wait_for(lambda: asyncio.run(committed_offsets(settings, group, [tp])) == {tp: 7}, timeout=10,
             message="the group's commit")
    assert offsets("--from-beginning", "--count", "1") == [0]  # no group: nothing committed, nothing read from


def test_a_million_dead_letters_list_since_10m_in_under_a_second(deployment):
    """The issue's figure: 999,000 dead letters of the last two days and 1,000 of the last ten minutes;
    `dlq list --since 10m`, the whole process, answers in under a second (the best of three runs, on a
    machine shared with the rest of the suite). Writing them takes about 10 s (bench/dlq_scale.py)."""
    from bench.dlq_scale import write as write_many

    total, recent = 1_000_000, 1000
    settings = Settings(kafka_bootstrap_servers=deployment.bootstrap, topic_prefix=deployment.prefix)
    asyncio.run(write_many(settings, deployment.names.dlq, total, recent))
    times = []
    for _ in range(3):
        started = time.perf_counter()
        listed = deployment.cli("dlq", "list", "--since", "10m", "--json").stdout
        times.append(time.perf_counter() - started)
        assert sum(line.startswith("{") for line in listed.splitlines()) == recent
    print(f"dlq list --since 10m among {total:,} dead letters: {', '.join(f'{t:.3f}' for t in times)} s")
    assert min(times) < 1.0, times
