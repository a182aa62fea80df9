"""The producer library installs alone: `pip install geodispatch` in a fresh virtualenv brings no
worker (no faust, no RocksDB), and its `geodispatch-produce` publishes a ping to the real broker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.integration.harness import ROOT


def test_the_base_install_publishes_a_ping_without_the_worker(deployment, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools builds the wheel in the tree
    assert pip.returncode == 0, pip.stdout + pip.stderr
    for worker_only in ("faust", "rocksdict", "prometheus_client"):
        found = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {worker_only}"], capture_output=True)
        assert found.returncode != 0, f"{worker_only} came with the base install"

    sent = subprocess.run(
        [str(venv / "bin" / "geodispatch-produce"), "ping", "--driver-id", "drv_pip", "--lat", "40.7128",
         "--lng", "-74.006"],
        env=deployment.env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    records = deployment.read(deployment.names.locations("4_-7"), 1)
    assert [(r.key, json.loads(r.value)["lat"]) for r in records] == [(b"drv_pip", 40.7128)]
    worker = subprocess.run([str(venv / "bin" / "geodispatch"), "worker"], env=deployment.env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode == 1 and "geodispatch[worker]" in worker.stderr, worker.stdout + worker.stderr
