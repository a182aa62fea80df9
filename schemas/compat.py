"""Schema evolution guard: every Avro schema version stays readable, and the history keeps its fixtures.

`python -m schemas.compat check` (run by `make test` through tests/unit/test_schema_evolution.py)
fails when, for any schema name, the newest version cannot read a record written with an earlier
version (backward: the pipeline reads what old producers still send), or an earlier version cannot
read a record written with the newest (forward: downstream consumers built on an old schema read
what we publish). The check is Avro's reader/writer schema resolution decided on the two schemas
(the `avro` library's ReaderWriterCompatibilityChecker, through `schemas.codec.resolution_problem`,
the same check the codec makes on a schema fetched from a registry), so it covers every value a
writer can produce: an int that becomes a string, an enum symbol removed, a union branch dropped, a
reader field without a default; not only the values one sample record happens to hold.

`python -m schemas.compat fixtures` writes, for every version that has none yet, a fixture of a
record written with that version (`avro/history/<Name>.v<N>.json` and its Confluent-framed
`.avro`). Fixtures already there are history and are never rewritten.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from schemas.codec import AVRO_DIR, MAGIC_BYTE, resolution_problem

HISTORY = "history"
_FILE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    schema_id: int
    path: Path
    raw: dict[str, Any]

    @property
    def parsed(self) -> Any:
        return fastavro.parse_schema(self.raw, named_schemas={})

    @property
    def stem(self) -> str:
        return f"{self.name}.v{self.version}"


def load_versions(directory: Path = AVRO_DIR) -> tuple[dict[str, list[Version]], list[str]]:
    """Every version per schema name, oldest first, and what is wrong with the registry itself."""
    problems: list[str] = []
    ids = json.loads((directory / "ids.json").read_text())
    by_name: dict[str, list[Version]] = {}
    registered: set[str] = set()
    for schema_id, filename in ids.items():
        if schema_id.startswith("_"):
            continue
        match = _FILE.match(filename)
        if match is None:
            problems.append(f"ids.json: {filename} is not named <Name>.v<N>.avsc")
            continue
        if filename in registered:
            problems.append(f"ids.json: {filename} has two ids")
        registered.add(filename)
        raw = json.loads((directory / filename).read_text())
        if raw.get("name") != match["name"]:
            problems.append(f"{filename}: record name {raw.get('name')!r} differs from the file name")
        version = Version(match["name"], int(match["version"]), int(schema_id), directory / filename, raw)
        by_name.setdefault(version.name, []).append(version)
    for path in sorted(directory.glob("*.avsc")):
        if path.name not in registered:
            problems.append(f"{path.name} has no schema id in ids.json")
    for name, versions in by_name.items():
        versions.sort(key=lambda v: v.version)
        numbers = [v.version for v in versions]
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"{name}: versions {numbers} are not 1..n")
        ids_in_order = [v.schema_id for v in versions]
        if ids_in_order != sorted(ids_in_order):
            # The codec takes the highest id of a name as its newest version.
            problems.append(f"{name}: a later version has a lower schema id ({ids_in_order})")
    return by_name, problems


# -- sample records ---------------------------------------------------------------------------------

_PRIMITIVES: dict[str, Any] = {
    "null": None, "boolean": True, "int": 7, "long": 7, "float": 1.5, "double": 1.5,
    "bytes": b"\x00\x01", "string": "sample",
}


def sample(schema: Any, prefer_null: bool) -> Any:
    """A value valid for `schema` (a parsed schema); unions take null, or their first other branch."""
    if isinstance(schema, str):
        return _PRIMITIVES[schema]
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if prefer_null and "null" in schema or not branches:
            return None
        return sample(branches[0], prefer_null)
    kind = schema["type"]
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "record":
        return {f["name"]: sample(f["type"], prefer_null) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return [sample(schema["items"], prefer_null)]
    if kind == "map":
        return {"k": sample(schema["values"], prefer_null)}
    if kind == "fixed":
        return b"\x00" * schema["size"]
    if isinstance(kind, dict | list):
        return sample(kind, prefer_null)
    raise ValueError(f"no sample for Avro type {kind!r}")


def _write(parsed: Any, record: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def readable(writer: Version, reader: Version) -> str | None:
    """None when `reader` can read any record written with `writer` (Avro schema resolution), else why not."""
    problem = resolution_problem(writer.raw, reader.raw)
    return f"{reader.stem} cannot read {writer.stem} data: {problem}" if problem else None


def compatibility_problems(by_name: dict[str, list[Version]]) -> list[str]:
    """Every shipped version against the current (newest) one, both ways: BACKWARD (the newest reads the
    older's data) and FORWARD (the older reads the newest's data)."""
    problems: list[str] = []
    for versions in by_name.values():
        newest = versions[-1]
        for older in versions[:-1]:
            for writer, reader in ((older, newest), (newest, older)):
                problem = readable(writer, reader)
                if problem:
                    problems.append(problem)
    return problems


# -- fixtures ---------------------------------------------------------------------------------------


def framed(version: Version, record: dict[str, Any]) -> bytes:
    """The record as it travels on a topic: Confluent wire format with this version's id."""
    return struct.pack(">bI", MAGIC_BYTE, version.schema_id) + _write(version.parsed, record)


def fixture_paths(version: Version, directory: Path = AVRO_DIR) -> tuple[Path, Path]:
    history = directory / HISTORY
    return history / f"{version.stem}.json", history / f"{version.stem}.avro"


def missing_fixtures(by_name: dict[str, list[Version]], directory: Path = AVRO_DIR) -> list[str]:
    return [
        str(path.relative_to(directory))
        for versions in by_name.values()
        for version in versions
        for path in fixture_paths(version, directory)
        if not path.exists()
    ]


def write_fixtures(by_name: dict[str, list[Version]], directory: Path = AVRO_DIR) -> list[Path]:
    """A fixture for every version lacking one: the previous version's record with the new fields
    at their defaults (or a sample value), written with this version's schema."""
    written: list[Path] = []
    (directory / HISTORY).mkdir(exist_ok=True)
    for versions in by_name.values():
        previous: dict[str, Any] | None = None
        for version in versions:
            json_path, avro_path = fixture_paths(version, directory)
            if json_path.exists():
                record = json.loads(json_path.read_text())
            else:
                record = {}
                for field in version.raw["fields"]:
                    name, kind = field["name"], fastavro.parse_schema(field["type"])
                    if previous is not None and name in previous and fastavro.validate(
                        previous[name], kind, raise_errors=False
                    ):
                        record[name] = previous[name]
                    elif "default" in field:
                        record[name] = field["default"]
                    else:
                        record[name] = sample(kind, prefer_null=False)
                json_path.write_text(json.dumps(record, indent=2) + "\n")
                written.append(json_path)
            if not avro_path.exists():
                avro_path.write_bytes(framed(version, record))
                written.append(avro_path)
            previous = record
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.compat", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "fixtures"])
    parser.add_argument("--dir", type=Path, default=AVRO_DIR)
    args = parser.parse_args(argv)
    by_name, problems = load_versions(args.dir)
    if args.command == "fixtures":
        for path in write_fixtures(by_name, args.dir):
            print(f"wrote {path}")
        return 0
    problems += compatibility_problems(by_name)
    hint = "(run `python -m schemas.compat fixtures`)"
    problems += [f"no fixture {path} {hint}" for path in missing_fixtures(by_name, args.dir)]
    for problem in problems:
        print(problem, file=sys.stderr)
    count = sum(len(v) for v in by_name.values())
    print(f"{len(by_name)} schemas, {count} versions: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
