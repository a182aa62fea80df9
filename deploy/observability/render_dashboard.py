"""The Grafana dashboard of deploy/observability/dashboard.json as a picture, without Grafana: samples
the /metrics of a deployment's processes during a run, then plots each panel of the dashboard from the
samples by evaluating the panel's own queries (the subset of PromQL the dashboard uses: `sum`,
`count`, `max`, `min`, `avg` with `by (...)`, `rate`, `increase`, `histogram_quantile`, label
matchers `=` and `!=`, and `$__rate_interval`).

    # while `make demo` runs (its processes: the API on :6066, sessions :6067, assignments :6068,
    # gateway :6070), then once it is done
    python deploy/observability/render_dashboard.py sample --out results/demo/metrics.jsonl --seconds 180
    python deploy/observability/render_dashboard.py plot results/demo/metrics.jsonl \
        --out docs/observability/dashboard.png

Each line of the samples file is one round of scrapes: `{"t": unix seconds, "targets": {instance: [[name,
labels, value], ...]}}`; every series gets the labels Prometheus would add (`instance`, `job`)."""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "dashboard.json"
# `make demo`'s processes (Makefile: DEMO_PORT, DEMO_GATEWAY_PORT), as instance=job,url.
DEMO_TARGETS = (
    "api:6066=geodispatch-worker,http://127.0.0.1:6066/metrics",
    "sessions:6067=geodispatch-worker,http://127.0.0.1:6067/metrics",
    "assignments:6068=geodispatch-worker,http://127.0.0.1:6068/metrics",
    "gateway:6070=geodispatch-gateway,http://127.0.0.1:6070/metrics",
)
KEPT_PREFIXES = ("geodispatch_", "process_", "python_")

Labels = tuple[tuple[str, str], ...]
Vector = dict[Labels, float]


# -- sampling -----------------------------------------------------------------------------------------


def scrape(url: str, timeout: float = 2.0) -> list[list[Any]]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return [[s.name, s.labels, s.value] for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith(KEPT_PREFIXES)]


def sample(targets: list[str], out: Path, interval_s: float, seconds: float) -> int:
    """Scrapes every target each `interval_s` for `seconds` (or until SIGINT/SIGTERM), appending a line
    per round to `out`; a target that does not answer (not started yet, or stopped) is left out of
    that round. Returns the rounds written."""
    parsed = []
    for target in targets:
        instance, _, rest = target.partition("=")
        job, _, url = rest.partition(",")
        parsed.append((instance, job, url))
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    out.parent.mkdir(parents=True, exist_ok=True)
    rounds, deadline = 0, time.monotonic() + seconds
    with out.open("a") as file:
        while not stop and time.monotonic() < deadline:
            started = time.monotonic()
            now, found = time.time(), {}
            for instance, job, url in parsed:
                try:
                    samples = scrape(url)
                except OSError:
                    continue
                for entry in samples:
                    entry[1] = {**entry[1], "instance": instance, "job": job}
                found[instance] = samples
            if found:
                file.write(json.dumps({"t": now, "targets": found}) + "\n")
                file.flush()
                rounds += 1
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    return rounds


# -- a small PromQL -----------------------------------------------------------------------------------

TOKEN = re.compile(r'\s*(?:(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)(?![A-Za-z_])|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)'
                   r'|(?P<str>"(?:[^"\\]|\\.)*")|(?P<op>!=|=~|!~|[(){}\[\],=])|(?P<var>\$__rate_interval))')
AGGREGATIONS = {"sum": sum, "count": len, "max": max, "min": min, "avg": lambda v: sum(v) / len(v)}


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]
    ranged: bool


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Aggregate:
    op: str
    by: tuple[str, ...]
    expr: Any


def tokens(expr: str) -> list[tuple[str, str]]:
    found, position = [], 0
    expr = expr.strip()
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot read {expr[position:]!r}")
        kind = match.lastgroup or ""
        found.append((kind, match.group(kind)))
        position = match.end()
    return found


class Parser:
    def __init__(self, expr: str) -> None:
        self.tokens = tokens(expr)
        self.at = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None) -> str:
        kind, text = self.peek()
        if value is not None and text != value:
            raise ValueError(f"expected {value!r}, found {text!r}")
        self.at += 1
        return text

    def parse(self) -> Any:
        node = self.expr()
        if self.peek()[0] != "end":
            raise ValueError(f"unsupported PromQL after {self.tokens[self.at - 1][1]!r}")
        return node

    def expr(self) -> Any:
        kind, text = self.peek()
        if kind == "num":
            self.take()
            return float(text)
        if kind != "name":
            raise ValueError(f"unexpected {text!r}")
        self.take()
        if text in AGGREGATIONS:
            by: tuple[str, ...] = ()
            if self.peek()[1] == "by":
                self.take()
                by = self.names()
            self.take("(")
            inner = self.expr()
            self.take(")")
            return Aggregate(text, by, inner)
        if self.peek()[1] == "(":
            self.take("(")
            args = [self.expr()]
            while self.peek()[1] == ",":
                self.take(",")
                args.append(self.expr())
            self.take(")")
            return Call(text, tuple(args))
        matchers = []
        if self.peek()[1] == "{":
            self.take("{")
            while self.peek()[1] != "}":
                label = self.take()
                op = self.take()
                if op not in ("=", "!="):
                    raise ValueError(f"unsupported matcher {op!r}")
                matchers.append((label, op, json.loads(self.take())))
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
        ranged = False
        if self.peek()[1] == "[":
            self.take("[")
            self.take()  # the range: the plot's own rate window stands for it
            self.take("]")
            ranged = True
        return Selector(text, tuple(matchers), ranged)

    def names(self) -> tuple[str, ...]:
        self.take("(")
        names = [self.take()]
        while self.peek()[1] == ",":
            self.take(",")
            names.append(self.take())
        self.take(")")
        return tuple(names)


class Samples:
    """Rounds of scrapes, evaluated at a round with a rate window reaching back `window_s`."""

    def __init__(self, rounds: list[dict[str, Any]], window_s: float) -> None:
        self.rounds = rounds
        self.window_s = window_s
        self.times = [r["t"] for r in rounds]
        self._vectors: list[dict[str, Vector]] = []
        for r in rounds:
            by_name: dict[str, Vector] = {}
            for samples in r["targets"].values():
                for name, labels, value in samples:
                    by_name.setdefault(name, {})[tuple(sorted(labels.items()))] = float(value)
            self._vectors.append(by_name)

    def earlier(self, index: int) -> int | None:
        """The latest round at least `window_s` before round `index`."""
        for j in range(index - 1, -1, -1):
            if self.times[index] - self.times[j] >= self.window_s:
                return j
        return None

    def evaluate(self, node: Any, index: int) -> Vector | float:
        if isinstance(node, float):
            return node
        if isinstance(node, Selector):
            return self.select(node, index)
        if isinstance(node, Aggregate):
            vector = self.evaluate(node.expr, index)
            groups: dict[Labels, list[float]] = {}
            for labels, value in vector.items():
                key = tuple((k, v) for k, v in labels if k in node.by)
                groups.setdefault(key, []).append(value)
            return {key: AGGREGATIONS[node.op](values) for key, values in groups.items()}
        if node.function in ("rate", "increase"):
            (selector,) = node.args
            then = self.earlier(index)
            if then is None:
                return {}
            now_vector, then_vector = self.select(selector, index), self.select(selector, then)
            elapsed = self.times[index] - self.times[then]
            result = {}
            for labels, value in now_vector.items():
                before = then_vector.get(labels)
                if before is None:  # as Prometheus: no rate of a series with one sample in the window
                    continue
                grown = value - before if value >= before else value  # a counter reset: a restarted process
                result[labels] = grown / elapsed if node.function == "rate" else grown
            return result
        if node.function == "histogram_quantile":
            quantile, inner = node.args
            return histogram_quantile(quantile, self.evaluate(inner, index))
        raise ValueError(f"unsupported function {node.function}")

    def select(self, selector: Selector, index: int) -> Vector:
        vector = self._vectors[index].get(selector.name, {})
        out = {}
        for labels, value in vector.items():
            found = dict(labels)
            if all((found.get(k) == v) == (op == "=") for k, op, v in selector.matchers):
                out[labels] = value
        return out


def histogram_quantile(quantile: float, buckets: Vector) -> Vector:
    """Prometheus's: the bucket where the quantile's rank falls, interpolated linearly within it."""
    series: dict[Labels, list[tuple[float, float]]] = {}
    for labels, value in buckets.items():
        found = dict(labels)
        upper = float(found.pop("le"))
        series.setdefault(tuple(sorted(found.items())), []).append((upper, value))
    result = {}
    for labels, points in series.items():
        points.sort()
        total = points[-1][1]
        if total <= 0 or not math.isinf(points[-1][0]):
            continue
        rank = quantile * total
        lower_bound, lower_count = 0.0, 0.0
        for upper, count in points:
            if count >= rank:
                if math.isinf(upper):
                    result[labels] = lower_bound
                elif count == lower_count:
                    result[labels] = upper
                else:
                    result[labels] = lower_bound + (upper - lower_bound) * (rank - lower_count) / (count - lower_count)
                break
            lower_bound, lower_count = upper, count
    return result


def legend(template: str, labels: Labels) -> str:
    found = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: found.get(m.group(1), ""), template).strip() or "value"


def panel_series(samples: Samples, panel: dict[str, Any]) -> Iterator[tuple[str, list[float], list[float]]]:
    """(legend, times, values) of each series a panel's queries give over the samples."""
    for target in panel["targets"]:
        node = Parser(target["expr"]).parse()
        lines: dict[str, tuple[list[float], list[float]]] = {}
        for index, t in enumerate(samples.times):
            result = samples.evaluate(node, index)
            if isinstance(result, float):
                result = {(): result}
            for labels, value in result.items():
                xs, ys = lines.setdefault(legend(target.get("legendFormat", ""), labels), ([], []))
                xs.append(t)
                ys.append(value)
        for name, (xs, ys) in sorted(lines.items()):
            yield name, xs, ys


# -- plotting -------------------------------------------------------------------------------------------

UNITS = {  # Grafana unit: (scale, axis label)
    "s": (1000.0, "ms"), "bytes": (1 / 2**20, "MiB"), "percentunit": (100.0, "% of a core"),
    "reqps": (1.0, "per second"), "ops": (1.0, "per second"), "short": (1.0, ""),
}


def rows_of(board: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            rows.append((panel["title"], list(panel.get("panels", []))))
        elif panel.get("targets"):
            if not rows:
                rows.append(("", []))
            rows[-1][1].append(panel)
    return [(title, panels) for title, panels in rows if panels]


def plot(samples_path: Path, out: Path, window_s: float, board_path: Path = DASHBOARD, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(board_path.read_text())
    rounds = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    if len(rounds) < 2:
        raise SystemExit(f"{samples_path}: fewer than two rounds of samples")
    samples = Samples(rounds, window_s)
    start = samples.times[0]
    rows = rows_of(board)
    columns = max(len(panels) for _, panels in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(5.2 * columns, 3.4 * len(rows)), squeeze=False)
    for row, (row_title, panels) in enumerate(rows):
        for column in range(columns):
            ax = axes[row][column]
            if column >= len(panels):
                ax.set_visible(False)
                continue
            panel = panels[column]
            scale, unit = UNITS.get(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"), (1.0, ""))
            drawn = 0
            for name, xs, ys in panel_series(samples, panel):
                ax.plot([x - start for x in xs], [y * scale for y in ys], linewidth=1.2, label=name[:40])
                drawn += 1
            ax.set_title(f"{row_title} · {panel['title']}" if row_title else panel["title"], fontsize=9.5)
            ax.set_ylabel(unit, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.set_xlim(0, samples.times[-1] - start)
            ax.set_ylim(bottom=0)
            if drawn:
                ax.legend(fontsize=6.5, loc="upper left", ncol=1 if drawn < 6 else 2, framealpha=0.6)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
            if row == len(rows) - 1 or column >= len(rows[row + 1][1]):
                ax.set_xlabel("seconds into the run", fontsize=8)
    figure.suptitle(title or f"{board['title']} dashboard, from {len(rounds)} rounds of /metrics samples "
                    f"(rate window {window_s:g} s)", fontsize=13)
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sampling = commands.add_parser("sample", help="scrape /metrics of each target every --interval seconds")
    sampling.add_argument("--target", action="append", help="instance=job,url (default: make demo's processes)")
    sampling.add_argument("--out", type=Path, required=True)
    sampling.add_argument("--interval", type=float, default=2.0)
    sampling.add_argument("--seconds", type=float, default=180.0)
    plotting = commands.add_parser("plot", help="plot the dashboard's panels from a samples file")
    plotting.add_argument("samples", type=Path)
    plotting.add_argument("--out", type=Path, required=True)
    plotting.add_argument("--window", type=float, default=10.0, help="the rate window, seconds")
    plotting.add_argument("--dashboard", type=Path, default=DASHBOARD)
    plotting.add_argument("--title", default="")
    args = parser.parse_args(argv)
    if args.command == "sample":
        rounds = sample(args.target or list(DEMO_TARGETS), args.out, args.interval, args.seconds)
        print(f"{rounds} rounds of samples in {args.out}")
    else:
        plot(args.samples, args.out, args.window, args.dashboard, args.title)
        print(f"the dashboard's panels in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
