"""The docs agree with the code: every setting has a row in a configuration table (README.md, or
docs/SECURITY.md for access and TLS) whose default is the code's, no row names a setting that does not
exist, and every repository path the docs name in backticks exists."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices, SecretStr

from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TABLES = (ROOT / "README.md", ROOT / "docs" / "SECURITY.md")
DOCS = (ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md")))
# A table row: | `NAME` (or `NAME` / `_OTHER`) | `default` or words | meaning |
ROW = re.compile(r"^\| `([A-Z0-9_]+\*?)`(?: / `(_[A-Z0-9_]+)`)? \| ([^|]*) \|", re.MULTILINE)
PATH = re.compile(r"`((?:streams|schemas|producers|consumers|infra|tests|bench|docs)/[A-Za-z0-9_./-]*)`")


def variables() -> dict[str, str]:
    """Each setting's environment variable, by field name."""
    names = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names[field] = alias.choices[0] if isinstance(alias, AliasChoices) else f"GEODISPATCH_{field.upper()}"
    return names


def documented() -> dict[str, str]:
    """Each documented variable and the default its row gives (as written)."""
    rows = {}
    for table in TABLES:
        for name, other, default in ROW.findall(table.read_text()):
            rows[name] = default.strip()
            if other:  # `..._SASL_USERNAME` / `_PASSWORD`: the second replaces as many trailing words
                rows[name.rsplit("_", other.count("_"))[0] + other] = default.strip()
    return rows


def as_written(value: object) -> str | None:
    """The code's default as the docs write it, or None for defaults the docs describe in words."""
    if value is None:
        return None
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def test_every_setting_has_a_row_with_the_codes_default():
    rows, names = documented(), variables()
    wildcards = [name[:-1] for name in rows if name.endswith("*")]
    missing, wrong = [], []
    for field, name in names.items():
        if any(name.startswith(prefix) for prefix in wildcards):
            continue
        if name not in rows:
            missing.append(name)
            continue
        code = as_written(Settings.model_fields[field].default)
        # Compared where the row gives the default as one value (some tables have no default column).
        if re.fullmatch(r"`[^`]*`", rows[name]) and code is not None and rows[name] != f"`{code}`":
            wrong.append(f"{name}: docs {rows[name]}, code `{code}`")
    assert missing == [], f"settings without a row in {', '.join(t.name for t in TABLES)}"
    assert wrong == []


def test_every_row_is_a_setting():
    known = set(variables().values())
    rows = [name for name in documented() if not name.endswith("*")]
    assert [name for name in rows if name not in known] == []


def test_every_path_the_docs_name_exists():
    missing = [f"{doc.relative_to(ROOT)}: {path}" for doc in DOCS for path in PATH.findall(doc.read_text())
               if not (ROOT / path.rstrip("/.")).exists()]
    assert missing == []
