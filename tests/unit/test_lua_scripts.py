"""The Redis scripts are package files, each opening with its name and the layout of its KEYS and
ARGV, so a caller can be checked against it without reading the Lua."""

from __future__ import annotations

from importlib import resources

from streams.index import SCRIPTS

FOLDER = resources.files("streams") / "lua"


def test_every_script_names_itself_and_its_arguments_in_its_header():
    files = sorted(f.name for f in FOLDER.iterdir() if f.name.endswith(".lua"))
    # Every file is used, every script is there, and common.lua goes ahead of each (streams.index.lua).
    assert files == sorted(f"{name}.lua" for name in (*SCRIPTS, "common"))
    for name in files:
        header = [line for line in (FOLDER / name).read_text().splitlines() if line.startswith("--")]
        assert header[0].startswith(f"-- {name}: "), name
        said = " ".join(header)
        assert name == "common.lua" or ("KEYS" in said and "ARGV" in said), name


def test_the_shared_steps_are_defined_once_and_used():
    common = (FOLDER / "common.lua").read_text()
    steps = [line.split("(")[0].removeprefix("local function ") for line in common.splitlines()
             if line.startswith("local function ")]
    assert steps
    bodies = " ".join((FOLDER / f"{name}.lua").read_text() for name in SCRIPTS)
    for step in steps:
        assert f"local function {step}(" not in bodies, step
        assert f"{step}(" in bodies or common.count(f"{step}(") > 1, step  # used by a script or another step

