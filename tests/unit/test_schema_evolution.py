"""Schema evolution: records written with every shipped schema version decode with the current reader,
and the compatibility check (run here, so in `make test` and CI) passes today and fails on a change
that would break old producers or old consumers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from schemas import default_codec
from schemas.codec import AVRO_DIR, Codec
from schemas.compat import compatibility_problems, fixture_paths, load_versions, main, missing_fixtures
from schemas.models import ALL_MESSAGES

MODELS = {model.avro_name: model for model in ALL_MESSAGES}
VERSIONS, REGISTRY_PROBLEMS = load_versions()
ALL_VERSIONS = [v for versions in VERSIONS.values() for v in versions]


def test_the_shipped_schemas_are_compatible_and_every_version_has_its_fixture(capsys):
    assert REGISTRY_PROBLEMS == []
    assert compatibility_problems(VERSIONS) == []
    assert missing_fixtures(VERSIONS) == []
    assert main(["check"]) == 0, capsys.readouterr().err


def test_every_model_has_a_schema_history():
    assert set(VERSIONS) == set(MODELS)


@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: v.stem)
def test_a_fixture_of_every_version_decodes_with_the_current_reader(version):
    json_path, avro_path = fixture_paths(version)
    written = json.loads(json_path.read_text())
    model = MODELS[version.name]
    codec = default_codec()
    decoded = codec.decode(model, avro_path.read_bytes())
    # The same record as a JSON producer would send it decodes to the same message.
    assert decoded == codec.decode(model, json.dumps(written).encode())
    assert codec.schema_by_id(version.schema_id).name == version.name
    # Nothing the old writer sent is dropped by the current reader (it may add defaults).
    current = codec.decode_raw(model, avro_path.read_bytes())
    for name, value in written.items():
        assert current[name] == value, name


# -- the check itself can fail ---------------------------------------------------------------------


def _history_with(tmp_path: Path, v2: dict) -> Path:
    directory = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, directory)
    (directory / "LocationPing.v2.avsc").write_text(json.dumps(v2))
    ids = json.loads((directory / "ids.json").read_text())
    ids[str(max(int(k) for k in ids if not k.startswith("_")) + 1)] = "LocationPing.v2.avsc"
    (directory / "ids.json").write_text(json.dumps(ids))
    return directory


def _ping_v2(*, drop: str | None = None, change: dict | None = None, add: dict | None = None) -> dict:
    schema = json.loads((AVRO_DIR / "LocationPing.v1.avsc").read_text())
    fields = [f for f in schema["fields"] if f["name"] != drop]
    fields = [{**f, **change} if change and f["name"] == change["name"] else f for f in fields]
    if add:
        fields.append(add)
    return {**schema, "fields": fields}


def test_an_optional_field_added_is_compatible_and_old_data_still_decodes(tmp_path):
    directory = _history_with(tmp_path, _ping_v2(add={"name": "provider", "type": ["null", "string"], "default": None}))
    assert main(["check", "--dir", str(directory)]) == 1  # v2 has no fixture yet
    assert main(["fixtures", "--dir", str(directory)]) == 0
    assert main(["check", "--dir", str(directory)]) == 0
    versions, problems = load_versions(directory)
    assert problems == [] and [v.version for v in versions["LocationPing"]] == [1, 2]
    # The codec now reads with v2 and writes v2; v1 data on the topic still decodes.
    codec = Codec.load(directory)
    old = (AVRO_DIR / "history" / "LocationPing.v1.avro").read_bytes()
    ping = codec.decode(MODELS["LocationPing"], old)
    assert ping.driver_id == "drv_7"
    assert codec.decode_raw(MODELS["LocationPing"], old)["provider"] is None
    v2_fixture = json.loads((directory / "history" / "LocationPing.v2.json").read_text())
    assert v2_fixture["provider"] is None and v2_fixture["driver_id"] == "drv_7"


@pytest.mark.parametrize(
    ("v2", "why"),
    [
        (_ping_v2(add={"name": "provider", "type": "string"}), "a required field without a default"),
        (_ping_v2(change={"name": "lat", "type": "string"}), "a field's type changed"),
        (_ping_v2(drop="ts"), "a required field removed (old consumers cannot read new data)"),
        (_ping_v2(change={"name": "driver_id", "type": ["null", "long"], "default": None}), "a union of another type"),
    ],
)
def test_an_incompatible_change_is_caught(tmp_path, v2, why):
    directory = _history_with(tmp_path, v2)
    versions, _ = load_versions(directory)
    assert compatibility_problems(versions), why
    main(["fixtures", "--dir", str(directory)])
    assert main(["check", "--dir", str(directory)]) == 1, why


def test_a_schema_without_an_id_or_with_a_bad_version_is_reported(tmp_path):
    directory = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, directory)
    (directory / "TripEvent.v3.avsc").write_text((AVRO_DIR / "TripEvent.v1.avsc").read_text())
    _, problems = load_versions(directory)
    assert any("TripEvent.v3.avsc has no schema id" in p for p in problems)
    ids = json.loads((directory / "ids.json").read_text())
    ids["99"] = "TripEvent.v3.avsc"
    (directory / "ids.json").write_text(json.dumps(ids))
    _, problems = load_versions(directory)
    assert any("versions [1, 3]" in p for p in problems)


# -- what a sample-record check would miss -----------------------------------------------------------
# The check decides on the two schemas (Avro's reader/writer resolution rules), not on one sample record
# per union branch: a change that breaks only values the sample does not hold is caught too.


def _pair(tmp_path: Path, v1_fields: list[dict], v2_fields: list[dict]) -> Path:
    """A registry of one schema, Thing, with two versions (its own directory: not the shipped history)."""
    directory = tmp_path / "pair"
    directory.mkdir()
    for version, fields in ((1, v1_fields), (2, v2_fields)):
        schema = {"type": "record", "name": "Thing", "namespace": "io.geodispatch", "fields": fields}
        (directory / f"Thing.v{version}.avsc").write_text(json.dumps(schema))
    (directory / "ids.json").write_text(json.dumps({"1": "Thing.v1.avsc", "2": "Thing.v2.avsc"}))
    return directory


def _one_sample_reads(versions) -> bool:
    """The check this module replaced: one sample record per union choice, written and read back."""
    import io

    import fastavro

    from schemas.compat import sample

    older, newest = versions
    for writer, reader in ((older, newest), (newest, older)):
        for prefer_null in (True, False):
            out = io.BytesIO()
            fastavro.schemaless_writer(out, writer.parsed, sample(writer.parsed, prefer_null))
            try:
                fastavro.schemaless_reader(io.BytesIO(out.getvalue()), writer.parsed, reader.parsed)
            except Exception:  # any failure means the sample check would have caught it
                return False
    return True


ENUM = {"type": "enum", "name": "Kind", "symbols": ["assign", "release", "ping"]}


@pytest.mark.parametrize(
    ("v1", "v2", "why"),
    [
        ([{"name": "kind", "type": ENUM}], [{"name": "kind", "type": {**ENUM, "symbols": ["assign", "release"]}}],
         "an enum symbol removed (the old writer may send 'ping'; the sample only holds 'assign')"),
        ([{"name": "v", "type": ["null", "string", "int"], "default": None}],
         [{"name": "v", "type": ["null", "string"], "default": None}],
         "a union branch removed (int) that the sample never takes"),
        ([{"name": "tags", "type": {"type": "map", "values": ["string", "long"]}}],
         [{"name": "tags", "type": {"type": "map", "values": ["string", "int"]}}],
         "a map's long values narrowed to int behind a union branch the sample never takes"),
    ],
)
def test_a_break_that_one_sample_record_misses_is_caught(tmp_path, v1, v2, why):
    directory = _pair(tmp_path, v1, v2)
    versions, problems = load_versions(directory)
    assert problems == []
    assert _one_sample_reads(versions["Thing"]), f"the old check would have caught it: {why}"
    found = compatibility_problems(versions)
    assert found, why
    assert all("cannot read" in problem for problem in found)


@pytest.mark.parametrize(
    ("v1", "v2", "expect"),
    [
        ([{"name": "n", "type": "int"}], [{"name": "n", "type": "string"}], "string"),
        ([{"name": "a", "type": "int"}], [{"name": "a", "type": "int"}, {"name": "b", "type": "string"}],
         "default"),
    ],
    ids=["int to string", "field added without a default"],
)
def test_the_reason_names_the_rule_broken(tmp_path, v1, v2, expect):
    found = compatibility_problems(load_versions(_pair(tmp_path, v1, v2))[0])
    assert found and any(expect in problem for problem in found), found


def test_type_promotions_avro_allows_pass_one_way(tmp_path):
    # int -> long: the new reader reads old data (BACKWARD), but an old int reader cannot read a long
    # (FORWARD), so the pair is refused with the direction named.
    found = compatibility_problems(load_versions(_pair(tmp_path, [{"name": "n", "type": "int"}],
                                                       [{"name": "n", "type": "long"}]))[0])
    assert found == [found[0]] and found[0].startswith("Thing.v1 cannot read Thing.v2 data"), found
