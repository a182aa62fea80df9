"""streams/faust_fixes.py overrides methods of faust-streaming's consumer and recovery, each because of how that
release of faust behaves. This test fails when a faust-streaming release changes one of them (its
signature or its code), naming the fix to re-check: the fix may no longer be needed, or may now be
wrong. It reads faust's source file, so it sees faust's methods, not ours installed over them."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import textwrap
import tokenize
from pathlib import Path

import pytest

SKIPPED = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
# (module, class, method) -> (fingerprint of faust's method, the fix that replaces it and what to check)
REPLACED = {
    ("faust.transport.consumer", "Consumer", "ack"): (
        "4ce82e761d52",
        "the ack guard: does faust's Stream still ack records it skips around a rebalance?"),
    ("faust.transport.consumer", "Consumer", "_add_gap"): (
        "91343ef45684",
        "the gap guard: does faust still mark skipped offsets acked (faust issues 216, 221)?"),
    ("faust.transport.consumer", "Consumer", "_new_offset"): (
        "686000a55e86",
        "the commit guard: is the off-by-one in faust's check of the committed offset still there?"),
    ("faust.transport.consumer", "ThreadDelegateConsumer", "seek_to_committed"): (
        "b1dfc749a210",
        "the seek guard: does it still delegate to aiokafka's seek_to_committed, which skips uncommitted "
        "partitions?"),
    ("faust.transport.consumer", "ThreadDelegateConsumer", "_getmany"): (
        "9ea6e4fb70fc",
        "topics read elsewhere: does faust still fetch only the partitions it names, and none when it names none?"),
    ("faust.transport.drivers.aiokafka", "Consumer", "verify_event_path"): (
        "93e8c235b5fe", "topics read elsewhere: does faust's check of each partition's reading still go through it?"),
    ("faust.tables.recovery", "Recovery", "_resume_streams"): (
        "8887e4033a88", "the seek-first recovery: does faust still resume stream partitions before their seek?"),
    ("faust.tables.recovery", "Recovery", "on_recovery_completed"): (
        "f0384ba407f3", "the seek-first recovery: does faust still resume stream partitions before their seek?"),
    ("faust.tables.manager", "TableManager", "recovery"): (
        "00aa046703d4", "the seek-first recovery: does faust's table manager still build its Recovery there?"),
}


def fingerprint(module: str, cls: str, method: str) -> str:
    """The first 12 hex digits of a sha256 of the method's tokens: its code and signature, without
    comments, docstring layout or blank lines, so the same code hashes alike on every Python."""
    source = Path(importlib.util.find_spec(module).origin).read_text()
    tree = ast.parse(source)
    (klass,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    (function,) = [n for n in klass.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == method]
    segment = textwrap.dedent(ast.get_source_segment(source, function, padded=True))
    kept = [t.string for t in tokenize.generate_tokens(io.StringIO(segment).readline) if t.type not in SKIPPED]
    return hashlib.sha256(" ".join(kept).encode()).hexdigest()[:12]


@pytest.mark.parametrize("where", sorted(REPLACED), ids=lambda w: f"{w[1]}.{w[2]}")
def test_the_faust_methods_our_fixes_replace_are_those_they_were_written_for(where):
    expected, recheck = REPLACED[where]
    found = fingerprint(*where)
    assert found == expected, (
        f"faust-streaming's {where[1]}.{where[2]} changed (fingerprint {found}, was {expected}): re-check "
        f"{recheck} (streams/faust_fixes.py); then record the new fingerprint here.")
