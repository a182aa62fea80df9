"""Which changelog partitions a worker reads in bulk before faust's recovery, and from where."""

from __future__ import annotations

from faust.types import TP

from streams.restore import ChangelogEntry, Span, spans_to_restore

A, B, C = TP("t-changelog", 0), TP("t-changelog", 1), TP("t-changelog", 2)


def test_a_wiped_store_is_read_from_the_start_of_the_log_and_a_warm_one_after_its_persisted_offset():
    spans = spans_to_restore({A: None, B: 4_999}, {A: 0, B: 0}, {A: 5_000, B: 12_000}, min_records=1_000)
    assert spans == {A: Span(0, 5_000), B: Span(5_000, 12_000)}


def test_partitions_nearly_caught_up_are_left_to_faust():
    spans = spans_to_restore({A: 10_500, B: None, C: None}, {A: 0, B: 0, C: 0}, {A: 11_000, B: 999, C: 0},
                             min_records=1_000)
    assert spans == {}


def test_records_deleted_by_retention_are_not_asked_for():
    spans = spans_to_restore({A: 10, B: None}, {A: 3_000, B: 2_000}, {A: 9_000, B: 4_000}, min_records=1_000)
    assert spans == {A: Span(3_000, 9_000), B: Span(2_000, 4_000)}


def test_zero_turns_bulk_restores_off():
    assert spans_to_restore({A: None}, {A: 0}, {A: 1_000_000}, min_records=0) == {}


def test_an_entry_reads_as_the_faust_event_apply_changelog_batch_takes():
    entry = ChangelogEntry(B, 7, b"k", b"v")
    assert (entry.message.tp, entry.message.offset, entry.message.partition) == (B, 7, 1)
    assert (entry.message.key, entry.message.value) == (b"k", b"v")

