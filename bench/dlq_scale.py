"""The DLQ tools on a long dead-letter topic: `geodispatch dlq list --since 10m` among 1,000,000 dead letters.

    python -m bench.dlq_scale [--total 1000000] [--recent 1000] [--runs 5] [--out FILE] [--keep]

Against the broker of the settings (KAFKA_BOOTSTRAP_SERVERS), under a topic prefix of its own: creates the
DLQ and the replay ledger topics as the topic plan has them, writes `total - recent` dead letters stamped
(record timestamp and dlq.failed_at alike) from two days to an hour ago, then `recent` from the last nine
minutes, and times each command as an operator runs it: the whole process, start to exit, `--runs` times.
Then deletes its topics (unless --keep). Prints one JSON document, also written to --out.

tests/integration/test_dlq_scale.py checks the one figure the issue asks for (best of three); this script
times more commands, more often, and reports the figures with the write time (7.7 s for a million here,
gzip batches of the producer's own)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.cleanup import remove_deployment
from infra.settings import Settings
from infra.topics import TopicNames, plan
from schemas import dead_letter as dl

ROOT = Path(__file__).resolve().parent.parent
OLD_FROM, OLD_TO = timedelta(days=2), timedelta(hours=1)
RECENT_SPAN = timedelta(minutes=9)
VALUE = b'{"driver_id": "drv_%d", "lat": 95.0, "lng": 3.3792, "ts": "2026-01-01T00:00:00Z"}'


def letter_headers(n: int, failed_at: datetime, region: str = "0_0") -> list[tuple[str, bytes]]:
    """A dead letter's headers as the worker writes them, a bad latitude's."""
    return [(name, value.encode()) for name, value in (
        (dl.ORIGINAL_TOPIC, f"driver_locations.{region}"), (dl.ORIGINAL_PARTITION, str(n % 8)),
        (dl.ORIGINAL_OFFSET, str(n)), (dl.ORIGINAL_TIMESTAMP, str(int(failed_at.timestamp() * 1000))),
        (dl.STAGE, "sessions"), (dl.ERROR_CLASS, "InvalidMessage"),
        (dl.ERROR_MESSAGE, "lat: Input should be less than or equal to 90"), (dl.ATTEMPTS, "1"),
        (dl.FAILED_AT, dl.iso_utc(failed_at)))]


async def create_topics(settings: Settings, names: TopicNames) -> None:
    wanted = {names.dlq, names.dlq_replays}
    specs = [spec for spec in plan(names, settings.regions, settings.partitions, 1) if spec.name in wanted]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.configs | spec.initial_configs)
            for spec in specs])
    finally:
        await admin.close()


async def write(settings: Settings, topic: str, total: int, recent: int) -> float:
    """Writes the dead letters in batches of the producer's own (one partition: the plan's DLQ has one);
    returns the seconds it took."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=50,
                                compression_type="gzip", max_batch_size=1 << 20, max_request_size=4 << 20)
    await producer.start()
    started = time.monotonic()
    now = datetime.now(UTC)
    old = total - recent
    try:
        pending = []
        batch = producer.create_batch()
        for n in range(total):
            if n < old:
                failed_at = now - OLD_FROM + (OLD_FROM - OLD_TO) * (n / max(1, old))
            else:
                failed_at = now - RECENT_SPAN + RECENT_SPAN * ((n - old) / max(1, recent))
            key = f"drv_{n % 5000}".encode()
            if batch.append(key=key, value=VALUE % n, timestamp=int(failed_at.timestamp() * 1000),
                            headers=letter_headers(n, failed_at)) is None:
                pending.append(await producer.send_batch(batch, topic, partition=0))
                batch = producer.create_batch()
                batch.append(key=key, value=VALUE % n, timestamp=int(failed_at.timestamp() * 1000),
                             headers=letter_headers(n, failed_at))
                if len(pending) >= 64:
                    await asyncio.gather(*pending)
                    pending = []
        pending.append(await producer.send_batch(batch, topic, partition=0))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


def timed(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """One command, as an operator runs it: a new process, timed from its start to its exit."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "streams", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"geodispatch {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return elapsed, result


def figures(times: list[float]) -> dict[str, float]:
    return {"min_s": round(min(times), 3), "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--recent", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="Leave the topics (their prefix is printed).")
    options = parser.parse_args()

    prefix = f"bench-dlq-{uuid.uuid4().hex[:8]}."
    settings = Settings(topic_prefix=prefix)
    names = TopicNames(prefix)
    env = dict(os.environ, GEODISPATCH_TOPIC_PREFIX=prefix, GEODISPATCH_LOG_LEVEL="WARNING")
    report: dict[str, object] = {"prefix": prefix, "total": options.total, "recent": options.recent}
    try:
        asyncio.run(create_topics(settings, names))
        report["write_s"] = round(asyncio.run(write(settings, names.dlq, options.total, options.recent)), 1)
        print(f"wrote {options.total} dead letters to {names.dlq} in {report['write_s']} s", file=sys.stderr)
        commands = {
            "dlq list --since 10m": ("dlq", "list", "--since", "10m", "--json"),
            "dlq list --limit 20": ("dlq", "list", "--limit", "20", "--json"),
            "dlq show (middle)": ("dlq", "show", str(options.total // 2)),
            "dlq replay --since 10m --dry-run": ("dlq", "replay", "--since", "10m", "--dry-run"),
        }
        expected_lines = {"dlq list --since 10m": options.recent, "dlq list --limit 20": 20}
        for name, args in commands.items():
            times = []
            for _ in range(options.runs):
                elapsed, result = timed(env, *args)
                times.append(elapsed)
                lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
                if name in expected_lines and len(lines) != expected_lines[name]:
                    raise AssertionError(f"{name}: {len(lines)} dead letters listed, not {expected_lines[name]}")
                if name.startswith("dlq replay") and f"{options.recent} to replay" not in result.stdout:
                    raise AssertionError(f"{name}: {result.stdout}")
            report[name] = figures(times)
            print(f"{name}: {report[name]}", file=sys.stderr)
        report["under_one_second"] = report["dlq list --since 10m"]["max_s"] < 1.0  # type: ignore[index]
    finally:
        if not options.keep:
            for problem in asyncio.run(remove_deployment(settings.kafka_bootstrap_servers, settings, prefix,
                                                         f"{prefix}nothing:")):
                print(problem, file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
