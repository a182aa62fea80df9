"""Starts one pipeline worker through the project's own `geodispatch worker` command, so the bench
measures exactly what operators run. BENCH_EVENT_LOOP=uvloop|asyncio forces the event loop, to
measure what the loop alone is worth (bench/README.md)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    loop = os.environ.get("BENCH_EVENT_LOOP")
    if loop == "uvloop":
        import uvloop

        uvloop.install()
    elif loop == "asyncio":
        import asyncio

        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    from streams.cli import worker

    worker.main(args=sys.argv[1:], prog_name="geodispatch worker", standalone_mode=True)


if __name__ == "__main__":
    main()
