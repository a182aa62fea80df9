"""Plain-text output of the consumer commands: fixed-width tables and byte previews."""

from __future__ import annotations

from collections.abc import Sequence


def value_preview(value: bytes | None, limit: int = 2000) -> str:
    """Text when the bytes are UTF-8, else hex, cut at `limit` characters."""
    if value is None:
        return "(null)"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = "hex:" + value.hex()
    return text if len(text) <= limit else text[:limit] + f"... ({len(value)} bytes)"


def table(rows: Sequence[dict[str, object]], columns: Sequence[tuple[str, str, int]]) -> list[str]:
    """Fixed-width text table: (title, key, max width) per column; long cells are cut with an ellipsis."""
    widths = []
    for title, key, cap in columns:
        longest = max([len(title)] + [len(str(row.get(key, ""))) for row in rows])
        widths.append(min(cap, longest))

    def cut(text: str, width: int) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = ["  ".join(title.ljust(w) for (title, _, _), w in zip(columns, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [cut(str(row.get(key, "")), w).ljust(w) for (_, key, _), w in zip(columns, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines
