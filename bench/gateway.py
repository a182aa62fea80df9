"""The real-time gateway under load (issue 25): one `geodispatch gateway` process holding more and more
subscribers, each following a booking of its own that moves once a second, and how many it held, how
many updates a second it delivered, and how late, against a bare Kafka consumer of the same topic in
the same minutes. Part of `make bench`; alone: `python -m bench --only gateway`.

The load runs in processes of its own (bench.gateway_load): the owners of the bookings, the
subscribers (SSE, a share of them Socket.IO, client tokens of each booking's owner), the tracking
updates, and the bare consumer. A step's figures are taken over the updates sent after a warm-up, by
the time each was sent (its `timestamp`), so every process is measured over the same seconds."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.deploy import ROOT, Deployment, Sampler, WorkerProcess, listener_pid, peak_rss_mib
from bench.stats import summarize
from infra.local import PYTHON, free_port

# Every booking moves once a second, at the throttle's default rate: an update that comes a hair early
# for its turn waits for it (consumers.gateway.throttle), as in a deployment left at its defaults.
UPDATE_EVERY_S = 1.0
MAX_PER_S = 1.0
# After the last update is sent, how long its subscribers are given to receive it.
TAIL_S = 2.0
# Enough for the generator's process to start and connect before its first update is due.
GENERATOR_START_S = 3.0
# A subscriber is still receiving at the end when it got an update sent in the last this many seconds.
RECEIVING_WITHIN_S = 2.0
# A step kept up when every subscriber was held and at least this share of updates was delivered.
DELIVERED_SHARE = 0.95


def gateway(run) -> None:
    """Steps of `run.sizes.gateway_subscribers` subscribers on one gateway, until a step does not keep
    up; results in `run.results['gateway']`."""
    s = run.sizes
    secret = uuid.uuid4().hex
    dep = run.deployment("g", extra_env={"GEODISPATCH_JWT_SECRET": secret,
                                         "GEODISPATCH_TRACKING_MAX_PER_S": str(MAX_PER_S)})
    dep.apply_topics()
    reader = None
    try:
        server = start_gateway(dep)
        server.wait_answering(120)
        rss_idle = psutil.Process(server.pid).memory_info().rss / 2**20
        broker_pid = listener_pid(dep.bootstrap.split(",")[0])
        ready = dep.workdir / "gateway-kafka.ready"
        reader_out = dep.workdir / "gateway-kafka.json"
        reader = dep.spawn("bench.gateway_load", "kafka", "--ready", str(ready), "--out", str(reader_out),
                           out=dep.workdir / "gateway-kafka.summary")
        _wait_file(ready, reader, 60)
        samplers = {"gateway": Sampler(server.pid), "kafka_reader": Sampler(reader.pid)}
        if broker_pid:
            samplers["broker"] = Sampler(broker_pid)
        for sampler in samplers.values():
            sampler.start()
        steps, failed = [], None
        for subscribers in s.gateway_subscribers:
            try:
                steps.append(_step(run, dep, server, subscribers, samplers))
            except (RuntimeError, TimeoutError, OSError) as exc:  # what held so far is still a finding
                failed = {"subscribers": subscribers, "error": f"{type(exc).__name__}: {exc}",
                          "gateway_alive": server.alive(), "gateway_log_tail": server.log_tail(20)}
                run.log(f"gateway: the step of {subscribers} subscribers failed: {failed['error']}")
                break
            if not steps[-1]["kept_up"]:
                break
        reader.send_signal(signal.SIGTERM)
        reader.wait(60)
        received = orjson.loads(reader_out.read_bytes())["received"]
        for step in steps:
            _add_kafka_alone(step, received, samplers["kafka_reader"].samples)
        for sampler in samplers.values():
            sampler.stop()
        for step in steps:
            run.log(_summary(step))
        run.results["gateway"] = {
            "update_every_s": UPDATE_EVERY_S,
            "tracking_max_per_s": MAX_PER_S,
            "socketio_share": s.gateway_socketio_share,
            "warmup_s": s.gateway_warmup_s,
            "seconds": s.gateway_seconds,
            "gateway_rss_mib_idle": round(rss_idle, 1),
            "gateway_peak_rss_mib": round(peak_rss_mib(server.pid) or 0, 1),
            "held_most": max((st["subscribers"] for st in steps if st["kept_up"]), default=0),
            "steps": steps,
            "failed_step": failed,
        }
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
        dep.cleanup()


def start_gateway(dep: Deployment) -> WorkerProcess:
    """`geodispatch gateway` of this checkout on a port of its own, stopped with the deployment."""
    port = free_port()
    log_path = dep.workdir / f"{dep.prefix}gateway.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen([PYTHON, "-m", "streams", "gateway", "--port", str(port)], env=dep.env(),
                                   cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    server = WorkerProcess("gateway", process, port, log_path, dep.workdir)
    dep.workers.append(server)
    return server


def _step(run, dep: Deployment, server: WorkerProcess, subscribers: int, samplers: dict[str, Sampler]
          ) -> dict[str, Any]:
    s = run.sizes
    # Booking ids have no dots (seed 002's channel names are dot-separated).
    tag = f"{dep.prefix.rstrip('.').replace('.', '-')}-n{subscribers}"
    owners_read = _metric(_metrics(server), "geodispatch_gateway_records_total", topic="booking_owners")
    dep.tool("bench.gateway_load", "owners", "--bookings", str(subscribers), "--tag", tag)
    # Each client is let in for its own booking only: the gateway must have read every owner first.
    _wait(lambda: _metric(_metrics(server), "geodispatch_gateway_records_total", topic="booking_owners")
          >= owners_read + subscribers, 60, "the gateway to read the bookings' owners")

    ready, out = dep.workdir / f"{tag}.ready", dep.workdir / f"{tag}.json"
    run.log(f"gateway: {subscribers} subscribers connecting")
    clients = dep.spawn("bench.gateway_load", "subscribers", "--port", str(server.port), "--bookings",
                        str(subscribers), "--tag", tag, "--socketio-share", str(s.gateway_socketio_share),
                        "--ready", str(ready), "--out", str(out), out=dep.workdir / f"{tag}.summary")
    try:
        _wait_file(ready, clients, 180)
        connecting = orjson.loads(ready.read_bytes())
        clients_sampler = Sampler(clients.pid)
        clients_sampler.start()
        # The generator starts at a set moment, so that the gateway's own counts are taken from the
        # end of the warm-up, like every other figure.
        start_at = time.time() + GENERATOR_START_S
        generator_out = dep.workdir / f"{tag}.updates"
        updates = dep.spawn("bench.gateway_load", "updates", "--bookings", str(subscribers), "--tag", tag,
                            "--every-s", str(UPDATE_EVERY_S), "--seconds", str(s.gateway_warmup_s + s.gateway_seconds),
                            "--start-at", str(start_at), out=generator_out)
        time.sleep(max(0.0, start_at + s.gateway_warmup_s - time.time()))
        before = _metrics(server)
        if updates.wait(s.gateway_warmup_s + s.gateway_seconds + 60) != 0:
            raise RuntimeError(f"the updates generator exited {updates.returncode}: "
                               f"{generator_out.with_suffix('.err').read_text()[-2000:]}")
        generator = orjson.loads(generator_out.read_bytes().splitlines()[-1])
        time.sleep(TAIL_S)
        after = _metrics(server)
        clients.send_signal(signal.SIGTERM)
        clients.wait(120)
        clients_sampler.stop()
    finally:
        if clients.poll() is None:
            clients.kill()
    received = orjson.loads(out.read_bytes())
    held = received["subscribers"]
    start, end = generator["started"] + s.gateway_warmup_s, generator["ended"]
    step = _figures(held, start, end)
    stalls = [late for at, late in received["stalls"] if start <= at <= end + TAIL_S]
    # The clients' own event loop waking late: updates late for that are not the gateway's.
    step["clients_stalls"] = {"count": len(stalls), "max_ms": round(1000 * max(stalls), 1) if stalls else 0}
    step.update(
        subscribers=subscribers,
        socketio=sum(h["transport"] == "socketio" for h in held),
        connected=connecting["connected"],
        connect_seconds=round(connecting["seconds"], 2),
        refusals=_refusals(held),
        window=(start, end),
        generator=generator,
        gateway_histogram=_delivery_histogram(before, after),
        sent_by_gateway=_delta(before, after, "geodispatch_gateway_messages_sent_total", kind="tracking"),
        throttled=_delta(before, after, "geodispatch_gateway_messages_throttled_total"),
        garbage_collections=_garbage_collections(before, after),
        dropped={reason: _delta(before, after, "geodispatch_gateway_dropped_subscribers_total", reason=reason)
                 for reason in ("slow_consumer", "token_expired")},
        cpu={"gateway": _cpu_share(samplers["gateway"].samples, start, end),
             "clients": _cpu_share(clients_sampler.samples, start, end),
             "generator": generator["cpu_share"],
             "broker": _cpu_share(samplers["broker"].samples, start, end) if "broker" in samplers else None},
        gateway_rss_mib=round(max((rss for t, rss, _ in samplers["gateway"].samples if start <= t <= end),
                                  default=0), 1),
    )
    # The generator keeps to its schedule (bench.load.paced): its rate is the offered load.
    step["offered_per_s"] = generator["rate"]
    step["delivered_share"] = round(step["delivered_per_s"] / generator["rate"], 4)
    step["kept_up"] = step["held_at_end"] == subscribers and step["delivered_share"] >= DELIVERED_SHARE
    _wait(lambda: not sum(server.stats()["connections"].values()), 60, "the gateway to see its subscribers go")
    return step


def _figures(held: Sequence[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """What the subscribers received of the updates sent within [start, end]: how many a second, how
    late (receipt minus the update's timestamp), and who still received at the end."""
    start_ms, end_ms, recent_ms = start * 1000, end * 1000, (end - RECEIVING_WITHIN_S) * 1000
    latencies: dict[str, list[float]] = {"sse": [], "socketio": []}
    out_of_order = 0
    receiving = 0
    for subscriber in held:
        stamps = [ts for ts, _ in subscriber["received"]]
        out_of_order += sum(1 for a, b in zip(stamps, stamps[1:], strict=False) if b <= a)
        latencies[subscriber["transport"]] += [arrived * 1000 - ts for ts, arrived in subscriber["received"]
                                               if start_ms <= ts <= end_ms]
        if subscriber["open_at_end"] and stamps and stamps[-1] >= recent_ms:
            receiving += 1
    every = latencies["sse"] + latencies["socketio"]
    seconds = end - start
    return {
        "seconds": round(seconds, 2),
        "held_at_end": receiving,
        "open_at_end": sum(h["open_at_end"] for h in held),
        "delivered": len(every),
        "delivered_per_s": round(len(every) / seconds, 1),
        "latency_ms": summarize(every, 2),
        "latency_ms_by_transport": {t: summarize(v, 2) for t, v in latencies.items() if v},
        "latency_sample": sorted(every)[:: max(1, len(every) // 2000)],
        "out_of_order": out_of_order,
        "wrong_booking": sum(h["wrong_booking"] for h in held),
    }


def _add_kafka_alone(step: dict[str, Any], received: Sequence[Sequence[float]],
                     reader_samples: list[tuple[float, float, float]]) -> None:
    """The bare consumer's view of the same seconds: its receipt minus the update's timestamp, what
    Kafka alone costs on this machine at this load, beside the subscribers' figure."""
    start, end = step["window"]
    inside = [(ts, arrived) for ts, arrived in received if start * 1000 <= ts <= end * 1000]
    kafka = summarize([arrived * 1000 - ts for ts, arrived in inside], 2)
    step["kafka_alone_ms"] = kafka
    step["kafka_alone_per_s"] = round(len(inside) / (end - start), 1)
    p99, alone = step["latency_ms"]["p99"], kafka["p99"]
    step["gateway_added_p99_ms"] = round(p99 - alone, 2) if p99 is not None and alone is not None else None
    step["cpu"]["kafka_reader"] = _cpu_share(reader_samples, start, end)


def _summary(step: dict[str, Any]) -> str:
    q, cpu = step["latency_ms"], step["cpu"]
    return (f"gateway: {step['subscribers']} subscribers ({step['socketio']} Socket.IO): held {step['held_at_end']}, "
            f"{step['delivered_per_s']:.0f} of {step['offered_per_s']:.0f} updates/s delivered, latency ms "
            f"p50 {q['p50']} p99 {q['p99']} max {q['max']} (Kafka alone p99 {step['kafka_alone_ms']['p99']}); "
            f"CPU gateway {cpu['gateway']} clients {cpu['clients']} generator {cpu['generator']}; "
            f"RSS {step['gateway_rss_mib']} MiB; throttled {step['throttled']:.0f}, dropped {step['dropped']}")


def _refusals(held: Sequence[dict[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for subscriber in held:
        if subscriber["refused"]:
            reason = subscriber["refused"][:80]
            found[reason] = found.get(reason, 0) + 1
    return found


def _cpu_share(samples: Sequence[tuple[float, float, float]], start: float, end: float) -> float | None:
    """Cores' worth of CPU a sampled process used between start and end (1.0: one core)."""
    inside = [(t, cpu) for t, _, cpu in samples if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 3)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _metrics(server: WorkerProcess) -> Samples:
    status, text = server.get("/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples over the series with these labels."""
    return sum(value for (found, series), value in samples.items()
               if found == name and labels.items() <= dict(series).items())


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return _metric(after, name, **labels) - _metric(before, name, **labels)


def _delivery_histogram(before: Samples, after: Samples) -> dict[str, Any]:
    """The gateway's own histogram of delivery (record timestamp to hand-over to the connection) over
    the measured seconds: each bucket's cumulative share, and the smallest bucket bound at or under which
    99 % fell."""
    name = "geodispatch_gateway_delivery_seconds_bucket"
    bounds = sorted({dict(series)["le"] for found, series in after if found == name}, key=float)
    counts = {le: _delta(before, after, name, le=le) for le in bounds}
    total = counts.get("+Inf", 0)
    return {
        "count": total,
        "cumulative_share": {le: round(n / total, 5) for le, n in counts.items()} if total else {},
        "p99_at_most_s": next((float(le) for le in bounds if total and counts[le] >= 0.99 * total), None),
    }


def _garbage_collections(before: Samples, after: Samples) -> dict[str, dict[str, float]]:
    """The gateway's collections in the measured seconds, per generation: how many, and their seconds in
    all (every connection waits while one runs)."""
    name = "geodispatch_gateway_gc_pause_seconds"
    return {generation: {"count": _delta(before, after, f"{name}_count", generation=generation),
                         "seconds": round(_delta(before, after, f"{name}_sum", generation=generation), 3)}
            for generation in ("0", "1", "2")}


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(0.1)


def _wait_file(path: Path, process: subprocess.Popen, timeout: float) -> None:
    """Until a load process writes its ready file; fails at once when it exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, process.args[2:4]))} exited {process.returncode} before ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} not written within {timeout}s")
        time.sleep(0.1)
