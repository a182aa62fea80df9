"""The live operator map (issue 25) in a real browser: a pipeline worker and a gateway on the real broker
and Redis, a simulated city, and headless Chromium driven by puppeteer-core (tests/clients/map_check.js)
loading /map/ with a support token until the city's drivers and an assignment show, in the page's
counters and in the screenshot's pixels. A token the gateway refuses is said so on the page.
GEODISPATCH_SAVE_SCREENSHOT=1 keeps the screenshot as docs/gateway/live_map.png."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.integration.harness import PYTHON, ROOT, Deployment

pytestmark = pytest.mark.integration

CLIENTS = ROOT / "tests" / "clients"
MAP_CHECK = CLIENTS / "map_check.js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DOCS_SCREENSHOT = ROOT / "docs" / "gateway" / "live_map.png"
SAVE_SCREENSHOT = os.environ.get("GEODISPATCH_SAVE_SCREENSHOT") == "1"
SECRET = f"live-map-test-{uuid.uuid4().hex}"

# The demo's city (Makefile DEMO_*): enough drivers and orders for a picture worth keeping. No driver
# loses its signal, so that every one of them stays on the map.
DRIVERS = 150
ORDERS_PER_S = 1.5
SPEEDUP = 20
CITY_S = 120
# The docs' picture waits for a busier map than the check needs.
ASSIGNMENTS = 20 if SAVE_SCREENSHOT else 1
MAP_TIMEOUT_S = 90
# The colours of map.js, and how many pixels of each a screenshot shows at least; the tolerance
# covers the canvas's antialiasing and the drivers' slight transparency.
AVAILABLE_GREEN = (0x2A, 0x9D, 0x4B)
ASSIGNMENT_MAGENTA = (0xC2, 0x18, 0x5B)
COLOUR_TOLERANCE = 30
MIN_PIXELS = 5


@pytest.fixture(autouse=True)
def browser_and_clients() -> None:
    if not (CLIENTS / "node_modules" / "puppeteer-core").is_dir():
        pytest.fail("the Node clients are not installed: `make test` does it (npm ci --prefix tests/clients)",
                    pytrace=False)
    if not (Path(CHROMIUM).is_file() and shutil.which("node")):
        pytest.fail(f"no Chromium at {CHROMIUM} (or no node): `make test` installs it (infra/debian-package.sh)",
                    pytrace=False)


def support_token(dep: Deployment, role: str = "support") -> str:
    return dep.cli("gateway", "token", "--sub", "ops", "--role", role, "--scopes", "map",
                   GEODISPATCH_JWT_SECRET=SECRET).stdout.strip()


def check_map(url: str, screenshot: Path, *options: str) -> tuple[int, dict[str, Any]]:
    """map_check.js's exit status and the JSON line it printed."""
    done = subprocess.run(["node", str(MAP_CHECK), url, "--screenshot", str(screenshot),
                           "--timeout-s", str(MAP_TIMEOUT_S), *options],
                          capture_output=True, text=True, timeout=MAP_TIMEOUT_S + 60,
                          env={**os.environ, "CHROMIUM": CHROMIUM})
    lines = done.stdout.strip().splitlines()
    assert lines, f"map_check.js printed nothing (exit {done.returncode}):\n{done.stderr}"
    return done.returncode, json.loads(lines[-1])


def pixels_near(image: Image.Image, colour: tuple[int, int, int]) -> int:
    distances = np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - np.array(colour, dtype=np.int16)).sum(axis=2)
    return int((distances <= COLOUR_TOLERANCE).sum())


def test_the_city_s_drivers_and_its_assignments_appear_on_the_map_in_a_browser(deployment, tmp_path):
    worker = deployment.start_worker()
    gateway = deployment.start_gateway(SECRET)
    worker.wait_ready()
    gateway.wait_answering()
    city_log = tmp_path / "simulate.log"
    with open(city_log, "ab") as log_file:
        city = subprocess.Popen(
            [PYTHON, "-m", "streams", "simulate", "--city", "new-york", "--drivers", str(DRIVERS),
             "--orders-per-s", str(ORDERS_PER_S), "--duration", str(CITY_S), "--speedup", str(SPEEDUP),
             "--dropout-per-hour", "0", "--seed", "1", "--run-id", "map-"],
            env=deployment.env(), cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    screenshot = DOCS_SCREENSHOT if SAVE_SCREENSHOT else tmp_path / "live_map.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    try:
        status, seen = check_map(f"{gateway.url('/map/')}#token={support_token(deployment)}", screenshot,
                                 "--drivers", str(DRIVERS), "--assignments", str(ASSIGNMENTS))
    finally:
        city.terminate()  # the city runs for longer than the check needs
        city.wait(30)
    assert status == 0, (f"{json.dumps(seen, indent=1)}\nthe simulator's last lines:\n"
                         f"{city_log.read_text(errors='replace')[-2000:]}\nthe gateway's:\n{gateway.log_tail(20)}")
    counts = seen["counts"]
    assert seen["status"] == "live"
    assert counts["drivers"] == DRIVERS
    assert counts["available"] + counts["onTrip"] + counts["offline"] == DRIVERS
    assert counts["onTrip"] >= 1 and counts["assignments"] >= ASSIGNMENTS
    assert seen["console_errors"] == [] and seen["page_errors"] == []
    # Drawn, not only counted.
    with Image.open(screenshot) as picture:
        assert pixels_near(picture, AVAILABLE_GREEN) >= MIN_PIXELS, "no available driver in the screenshot"
        assert pixels_near(picture, ASSIGNMENT_MAGENTA) >= MIN_PIXELS, "no assignment in the screenshot"


def test_the_map_says_when_the_gateway_refuses_its_token(deployment, tmp_path):
    gateway = deployment.start_gateway(SECRET)
    gateway.wait_answering()
    page = gateway.url("/map/")
    cases = [("not-a-token", "token refused (401", "status of 401"),
             (support_token(deployment, role="client"), "not allowed (403", "status of 403")]
    for token, says, refused_request in cases:
        # The browser logs the refused request itself as an error: that one is expected.
        status, seen = check_map(f"{page}#token={token}", tmp_path / "refused.png", "--status", says,
                                 "--allow-console", refused_request)
        assert status == 0, json.dumps(seen, indent=1)
        assert seen["counts"]["snapshots"] == 0 and seen["page_errors"] == []
    status, seen = check_map(page, tmp_path / "no_token.png", "--status", "no token")
    assert status == 0 and seen["console_errors"] == [], json.dumps(seen, indent=1)
