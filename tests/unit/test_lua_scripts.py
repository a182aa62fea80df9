"""The Redis scripts are package files, each opening with its name and the layout of its KEYS and
ARGV, so a caller can be checked against it without reading the Lua."""

from __future__ import annotations

from importlib import resources

from streams.index import SCRIPTS

FOLDER = resources.files("streams") / "lua"


def test_every_script_names_itself_and_its_arguments_in_its_header():
    scripts = sorted(f.name for f in FOLDER.iterdir() if f.name.endswith(".lua"))
    assert scripts == sorted(f"{name}.lua" for name in SCRIPTS)  # every file is used, every script is there
    for name in scripts:
        header = [line for line in (FOLDER / name).read_text().splitlines() if line.startswith("--")]
        assert header[0].startswith(f"-- {name}: "), name
        said = " ".join(header)
        assert "KEYS" in said and "ARGV" in said, name

