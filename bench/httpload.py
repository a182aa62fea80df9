"""Closed-loop HTTP load from its own process: `--clients` aiohttp clients, each sending its next
request as soon as the previous one is answered, for `--seconds`; prints latency percentiles.

    python -m bench.httpload --port P --route nearby|session --clients 50 --seconds 10 --drivers N"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

import h3
import orjson

from bench.load import CITY, driver_id
from bench.stats import summarize


async def run(args: argparse.Namespace) -> dict:
    import aiohttp

    base = f"http://127.0.0.1:{args.port}/driver-sessions/sessions"
    rnd = random.Random(7)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    found = 0
    deadline = time.perf_counter() + args.seconds

    def url() -> str:
        if args.route == "nearby":
            cell = h3.latlng_to_cell(rnd.uniform(CITY[0], CITY[1]), rnd.uniform(CITY[2], CITY[3]), 9)
            return f"{base}/nearby?h3={cell}&k=2&limit=20"
        return f"{base}/{driver_id(rnd.randrange(args.drivers))}"

    async def client(session) -> None:
        nonlocal found
        while time.perf_counter() < deadline:
            target = url()
            started = time.perf_counter()
            async with session.get(target) as response:
                body = await response.read()
            latencies.append(time.perf_counter() - started)
            statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
            if args.route == "nearby" and response.status == 200:
                found += len(orjson.loads(body)["drivers"])

    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(args.clients)))
        elapsed = time.perf_counter() - started
    return {
        "route": args.route,
        "clients": args.clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "per_second": round(len(latencies) / elapsed, 1),
        "statuses": statuses,
        "latency_ms": summarize([x * 1000 for x in latencies]),
        "mean_drivers_returned": round(found / max(1, statuses.get("200", 0)), 1) if args.route == "nearby" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.httpload")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--route", choices=["nearby", "session"], required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--drivers", type=int, default=10_000)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    sys.stdout.write(orjson.dumps(asyncio.run(run(args))).decode() + "\n")


if __name__ == "__main__":
    main()
