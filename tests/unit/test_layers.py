"""Every import points down: the layers, lowest first, are written once here, and a module may import
only from its own layer or below. So a team that only publishes events installs no worker, and the
core never depends on a tool built on it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lowest first. A module belongs to the layer of its longest listed prefix.
LAYERS: list[tuple[str, ...]] = [
    ("schemas", "infra"),  # message shapes; settings, client factories, the topic plan, the servers
    ("producers", "consumers"),  # the libraries and tools of the services around the pipeline
    ("streams",),  # the worker
    ("streams.cli", "streams.__main__"),  # the command line, which gathers every tool
]


def layer_of(module: str) -> int | None:
    found = [(len(prefix), rank) for rank, prefixes in enumerate(LAYERS) for prefix in prefixes
             if module == prefix or module.startswith(prefix + ".")]
    return max(found)[1] if found else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def upward_imports() -> list[str]:
    upward = []
    for package in {prefix.split(".")[0] for prefixes in LAYERS for prefix in prefixes}:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            own = layer_of(module)
            for imported in sorted(imports_of(path)):
                theirs = layer_of(imported)
                if theirs is not None and theirs > own:
                    upward.append(f"{module} imports {imported} ({LAYERS[theirs]} is above {LAYERS[own]})")
    return upward


def test_every_import_points_down():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import():
    assert layer_of("streams.cli") > layer_of("streams.app") > layer_of("consumers.dlq") > layer_of("infra.topics")
    assert layer_of("streams.client") == layer_of("streams")  # a prefix of a name is not its package
    assert layer_of("aiokafka") is None
