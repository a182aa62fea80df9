"""The ceilings the pipeline is compared with, measured on the same broker in the same run:
a bare aiokafka consume loop (the most Python gets out of Kafka) and Kafka's own Java performance
tools from the broker's distribution (the most the broker gets out of this machine).

    python -m bench.baselines aiokafka --topic T --expect N [--decode]"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
KAFKA_SCRIPT = ROOT / "infra" / "kafka" / "kafka.sh"


async def aiokafka_loop(topic: str, expect: int, decode: bool, idle_s: float = 5.0) -> dict:
    """Reads a topic from the beginning with a plain getmany loop: no framework, no state, no
    output; with `decode`, also the project's codec on each value (the floor of any real agent)."""
    from aiokafka import AIOKafkaConsumer

    from schemas.codec import default_codec
    from schemas.models import LocationPing

    codec = default_codec()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    count = 0
    first = last = None
    idle_since = time.perf_counter()
    try:
        while count < expect and time.perf_counter() - idle_since < idle_s:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                if first is None:
                    first = time.perf_counter()
                if decode:
                    for record in records:
                        codec.decode(LocationPing, record.value)
                count += len(records)
            if batch:
                last = idle_since = time.perf_counter()
    finally:
        await consumer.stop()
    seconds = (last - first) if first and last and last > first else None
    return {
        "tool": "aiokafka_decode" if decode else "aiokafka",
        "records": count,
        "seconds": round(seconds, 3) if seconds else None,
        "per_second": round(count / seconds, 1) if seconds else None,
    }


def kafka_classpath() -> str:
    """The broker distribution's jars, fetched by Maven if this checkout has none yet (it may be using a
    broker another checkout or KAFKA_BOOTSTRAP_SERVERS provides)."""
    return subprocess.run([str(KAFKA_SCRIPT), "classpath"], capture_output=True, text=True, check=True).stdout.strip()


def java(*args: str, timeout: float = 180) -> str:
    command = ["java", "-Xmx512m", "-Dlog4j2.level=WARN", "-cp", kafka_classpath(), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def producer_performance(topic: str, records: int, payload_file: Path) -> dict:
    """Kafka's ProducerPerformance with the pipeline's own ping payloads, acks=all like our producers."""
    out = java(
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--throughput",
        "-1",
        "--payload-file",
        str(payload_file),
        "--producer-props",
        f"bootstrap.servers={BOOTSTRAP}",
        "acks=all",
        "linger.ms=5",
        "batch.size=262144",
    )
    match = re.search(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency", out)
    if not match:
        raise RuntimeError(f"ProducerPerformance printed no summary:\n{out[-1000:]}")
    return {
        "tool": "ProducerPerformance",
        "records": int(match[1]),
        "per_second": float(match[2]),
        "mb_per_second": float(match[3]),
        "avg_latency_ms": float(match[4]),
    }


def consumer_performance(topic: str, records: int, group: str) -> dict:
    """Kafka's ConsumerPerformance over the same topic the pipeline read."""
    out = java(
        "org.apache.kafka.tools.ConsumerPerformance",
        "--bootstrap-server",
        BOOTSTRAP,
        "--topic",
        topic,
        "--messages",
        str(records),
        "--timeout",
        "15000",
        "--group",
        group,
    )
    lines = [line for line in out.splitlines() if line.strip()]
    header = [h.strip() for h in lines[-2].split(",")]
    values = [v.strip() for v in lines[-1].split(",")]
    row = dict(zip(header, values, strict=False))
    return {
        "tool": "ConsumerPerformance",
        "records": int(float(row["data.consumed.in.nMsg"])),
        "per_second": float(row["fetch.nMsg.sec"]),
        "per_second_with_join": float(row["nMsg.sec"]),
        "mb_per_second": float(row["fetch.MB.sec"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument("tool", choices=["aiokafka"])
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--decode", action="store_true")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    result = asyncio.run(aiokafka_loop(args.topic, args.expect, args.decode))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
