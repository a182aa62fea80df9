"""HTTP load from its own process, for `--seconds`; prints latency percentiles.

Closed loop (the default): `--clients` aiohttp clients, each sending its next request as soon as the
previous one is answered. Open loop (`--rate R`): R requests a second sent on a fixed schedule whatever
the answers, each one's latency counted from when the schedule said to send it, so that a server that
falls behind is charged for the requests that waited (no coordinated omission).

    python -m bench.httpload --port P --route nearby|session [--clients 50 | --rate 2000] --seconds 10"""

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

    async def timed_get(session, target: str, due: float) -> None:
        nonlocal found
        async with session.get(target) as response:
            body = await response.read()
        latencies.append(time.perf_counter() - due)
        statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
        if args.route == "nearby" and response.status == 200:
            found += len(orjson.loads(body)["drivers"])

    async def scheduled(session) -> None:
        """Request n is due at start + n / rate; the sender sleeps until then, and never waits for
        answers (they are awaited by tasks of their own)."""
        start = time.perf_counter()
        in_flight: set[asyncio.Task] = set()
        n = 0
        while (due := start + n / args.rate) < deadline:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(timed_get(session, url(), due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            n += 1
        await asyncio.gather(*in_flight)

    async def client(session) -> None:
        while time.perf_counter() < deadline:
            await timed_get(session, url(), time.perf_counter())

    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        if args.rate:
            await scheduled(session)
        else:
            await asyncio.gather(*(client(session) for _ in range(args.clients)))
        elapsed = time.perf_counter() - started
    return {
        "route": args.route,
        "loop": "open" if args.rate else "closed",
        "rate": args.rate,
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
    parser.add_argument("--clients", type=int, default=50,
                        help="closed loop: the clients; open loop: the most connections open at once")
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests a second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--drivers", type=int, default=10_000)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    sys.stdout.write(orjson.dumps(asyncio.run(run(args))).decode() + "\n")


if __name__ == "__main__":
    main()
