"""The guides' examples (examples/<language>, docs/producers.md) against the real broker and a worker: each
one's driver and order land on the partitions murmur2 gives their keys, and each reads its order's answer.

Each example is built once per session, its outputs cached under .cache/examples/<language>/ by a hash of
its sources: Java with Maven, Go with the go command (modules from the Go proxy, go.sum committed), Node
with `npm ci`. A missing runtime fails the test with what to install, never skips it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.topics import key_partition
from tests.integration.harness import PYTHON, ROOT, Deployment

EXAMPLES = ROOT / "examples"
CACHE = ROOT / ".cache" / "examples"
# Enough partitions that a record on the wrong one is seldom on the right one by chance; the ids below
# are also chosen so that the partitioners a client might wrongly use (FNV-1a, CRC32) would miss.
PARTITIONS = 8
REGION = "4_-7"  # the examples' restaurant and driver are in New York
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Example:
    language: str
    command: tuple[str, ...]
    env: dict[str, str]


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not on PATH: the {tools[0]} example cannot be built or run here "
                    f"(README's prerequisites: Java 17 and Maven, Go, Node with npm)", pytrace=False)


def _digest(*paths: Path) -> str:
    """A hash of the files (recursively for folders, less build outputs) an example is built from."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file() and "node_modules" not in p.parts
                       and "target" not in p.parts) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _build(language: str, digest: str, command: list[str], cwd: Path, **env: str) -> None:
    """Runs the build unless this digest's stamp says it already ran; fails with its output."""
    stamp = CACHE / language / f".built-{digest}"
    if stamp.exists():
        return
    stamp.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"building the {language} example failed ({' '.join(command)}):\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}", pytrace=False)
    for old in stamp.parent.glob(".built-*"):
        old.unlink()
    stamp.touch()


def python_example() -> Example:
    return Example("python", (PYTHON, str(EXAMPLES / "python" / "dispatch_example.py")), {})


def java_example() -> Example:
    _need("mvn", "java")
    out = CACHE / "java"
    _build("java", _digest(EXAMPLES / "java", ROOT / "schemas" / "avro"),
           ["mvn", "-B", "-q", "-f", str(EXAMPLES / "java" / "pom.xml"), f"-Dexamples.build={out}",
            "compile", "dependency:build-classpath", f"-Dmdep.outputFile={out / 'classpath.txt'}"], ROOT)
    classpath = f"{out / 'classes'}:{(out / 'classpath.txt').read_text().strip()}"
    return Example("java", ("java", "-cp", classpath, "io.geodispatch.examples.DispatchExample"), {})


def go_example() -> Example:
    _need("go")
    binary = CACHE / "go" / "dispatch-example"
    # go.sum is committed: -mod=readonly fails on a module it does not vouch for instead of adding it.
    _build("go", _digest(EXAMPLES / "go"), ["go", "build", "-mod=readonly", "-o", str(binary), "."],
           EXAMPLES / "go")
    # The binary lives in the cache: name the schemas it reads with VALUE_FORMAT=avro rather than rely on the
    # source path compiled into it (gone with -trimpath).
    return Example("go", (str(binary),), {"GEODISPATCH_SCHEMAS": str(ROOT / "schemas" / "avro")})


def node_example() -> Example:
    _need("node", "npm")
    out = CACHE / "node"
    source = EXAMPLES / "node"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(source / name, out / name)
    # The modules go to the cache; the script runs from examples/node and finds them through NODE_PATH.
    _build("node", _digest(source / "package.json", source / "package-lock.json"),
           ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(out)], ROOT)
    return Example("node", ("node", str(source / "dispatch_example.js")), {"NODE_PATH": str(out / "node_modules")})


BUILDERS = {"python": python_example, "java": java_example, "go": go_example, "node": node_example}


@pytest.fixture(scope="module")
def examples():
    """Each language's example, built at its first use in the session."""
    built: dict[str, Example] = {}

    def get(language: str) -> Example:
        if language not in built:
            built[language] = BUILDERS[language]()
        return built[language]

    return get


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """One worker on topics of its own with PARTITIONS partitions; drivers stay online between examples."""
    deployment = Deployment(workdir=tmp_path_factory.mktemp("examples"), partitions=PARTITIONS,
                            regions=(REGION,),
                            extra_env={"GEODISPATCH_MISSED_HEARTBEATS": "1000",
                                       "GEODISPATCH_LOCATION_MAX_AGE_S": "600"})
    deployment.apply_topics()
    try:
        deployment.start_worker().wait_ready()
        yield deployment
    finally:
        deployment.cleanup()


def fnv1a(key: bytes) -> int:
    value = 0x811C9DC5
    for byte in key:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def discriminating_id(stem: str) -> str:
    """`stem` with a suffix (and a non-ASCII letter: keys are hashed as UTF-8) such that murmur2 puts it on
    another partition than FNV-1a (sarama's and kafka-go's hash default) and CRC32 (librdkafka's default)."""
    for n in range(1000):
        candidate = f"{stem}-ü{n}"
        key = candidate.encode()
        right = key_partition(key, PARTITIONS)
        if right not in (fnv1a(key) % PARTITIONS, zlib.crc32(key) % PARTITIONS):
            return candidate
    raise AssertionError(f"no discriminating id for {stem}")


CASES = [("python", "json"), ("python", "avro"), ("java", "json"), ("java", "avro"), ("go", "json"), ("go", "avro"),
         ("node", "json"), ("node", "avro")]


@pytest.mark.parametrize(("language", "value_format"), CASES, ids=[f"{lang}-{fmt}" for lang, fmt in CASES])
def test_the_example_partitions_like_murmur2_and_reads_its_answer(examples, pipeline, language, value_format):
    example = examples(language)
    run_id = uuid.uuid4().hex[:6]
    driver_id = discriminating_id(f"drv-{language}-{value_format}-{run_id}")
    order_id = discriminating_id(f"ord-{language}-{value_format}-{run_id}")
    names = pipeline.names
    env = pipeline.env(DRIVER_ID=driver_id, ORDER_ID=order_id, VALUE_FORMAT=value_format,
                       CONSUMER_GROUP=f"{pipeline.prefix}example-{language}-{value_format}", SETTLE_S="2",
                       ANSWER_TIMEOUT_S="60", **example.env)
    result = subprocess.run(example.command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{language} example: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

    # What the example says it produced, and what the topics hold: both on the key's murmur2 partition.
    produced = {(line["produced"], line["key"]): line["partition"] for line in lines if "produced" in line}
    avro_ids = {names.locations(REGION): 1, names.status: 2, names.requests(REGION): 3}  # schemas/avro/ids.json
    expected = {(names.status, driver_id), (names.locations(REGION), driver_id), (names.requests(REGION), order_id)}
    assert set(produced) == expected, lines
    for (topic, key), partition in produced.items():
        want = key_partition(key.encode(), PARTITIONS)
        assert partition == want, f"{language}: {key!r} went to {topic}[{partition}], murmur2 says {want}"
        held = [r for r in pipeline.read_all(topic) if r.key == key.encode()]
        assert [r.partition for r in held] == [want], (topic, key, held)
        if value_format == "avro":  # Confluent framing: magic byte 0, then the schema's fixed id
            assert held[0].value[0] == 0 and int.from_bytes(held[0].value[1:5], "big") == avro_ids[topic], held[0]
        else:
            json.loads(held[0].value)

    # The example read its order's answer, which the worker wrote keyed by the order on its partition.
    answers = [line for line in lines if "answer" in line]
    assert len(answers) == 1, lines
    answer = answers[0]
    assert answer["key"] == order_id and answer["partition"] == key_partition(order_id.encode(), PARTITIONS)
    assert answer["answer"]["orderId"] == order_id
    assert answer["answer"]["status"] == "assigned", answer
    assert answer["answer"]["driverId"] == driver_id, answer
    written = [json.loads(r.value) for r in pipeline.read_all(names.responses) if r.key == order_id.encode()]
    assert written and written[0] == answer["answer"]
