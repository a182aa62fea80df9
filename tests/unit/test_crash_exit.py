"""A crashed worker ends its process even when faust's orderly stop never returns (streams.app,
DispatchApp.crash): run in a child process whose stop is made to hang for good."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from streams.app import CRASH_EXIT_STATUS

HANGING_AFTER_A_CRASH = textwrap.dedent("""
    import asyncio, time
    import streams.app
    from infra.settings import Settings
    from streams.logging import configure_logging

    configure_logging("INFO", "json")
    streams.app.CRASH_STOP_S = 0.5
    app = streams.app.DispatchApp(Settings())
    asyncio.run(app.crash(RuntimeError("the store refused a write")))
    time.sleep(120)  # the orderly stop that never ends
""")


def _run(script: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    return done, time.monotonic() - started


def test_a_crashed_worker_whose_stop_hangs_exits_with_the_crash_status():
    done, took = _run(HANGING_AFTER_A_CRASH)
    assert done.returncode == CRASH_EXIT_STATUS, done.stderr[-2000:]
    assert took < 60
    assert '"event":"crash_stop_overdue"' in done.stdout
    assert "the store refused a write" in done.stdout


def test_a_process_that_ends_in_time_is_not_held_by_the_timer():
    done, took = _run("import streams.app\n"
                      "streams.app.exit_unless_stopped(60, RuntimeError('crashed'))\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert took < 30
