"""Fence tokens and which changelog entries a restore keeps."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams.logic.fencing import Fence, advances_persisted_offset, entries_to_keep
from streams.logic.sessions import DriverSession
from streams.tables import session_stamp


def test_the_token_is_the_assignment_time_and_never_goes_back():
    fence = Fence()
    assert fence.advance(1_000) == 1_000
    assert fence.advance(5_000) == 5_000
    assert fence.advance(4_000) == 5_001  # the clock stepped back: the token still grows
    assert fence.advance(5_001) == 5_002


def test_a_zombies_late_entry_after_the_new_owners_is_skipped():
    # Owner A (token 100) wrote v3; B took over (token 200) and wrote v4 (trip) and v5 (delivered);
    # A, paused, then wrote its v4 late. The restore must end at B's v5.
    entries = [(b"drv", (100, 3)), (b"drv", (200, 4)), (b"drv", (200, 5)), (b"drv", (100, 4))]
    assert entries_to_keep(entries, lambda key: None) == [0, 1, 2]


def test_what_the_store_already_holds_counts_as_the_entry_before():
    assert entries_to_keep([(b"drv", (100, 9))], lambda key: (200, 1)) == []
    assert entries_to_keep([(b"drv", (200, 1))], lambda key: (200, 1)) == [0]  # the same entry again
    assert entries_to_keep([(b"drv", (300, 1))], lambda key: (200, 7)) == [0]  # a newer owner wins


def test_keys_are_judged_apart_and_deletions_always_apply():
    entries = [(b"a", (200, 1)), (b"b", (100, 1)), (b"a", (100, 2)), (b"b", None)]
    assert entries_to_keep(entries, lambda key: None) == [0, 1, 3]


@given(st.lists(st.tuples(st.sampled_from([b"a", b"b"]), st.tuples(st.integers(0, 3), st.integers(0, 3))), max_size=30))
def test_the_kept_entries_of_each_key_never_go_back(entries):
    kept = entries_to_keep(entries, lambda key: None)
    for key in (b"a", b"b"):
        stamps = [entries[i][1] for i in kept if entries[i][0] == key]
        assert stamps == sorted(stamps)
        if stamps:  # and the newest stamp of the key is among them
            assert stamps[-1] == max(stamp for k, stamp in entries if k == key)


def test_a_stored_session_carries_its_writers_token_and_older_values_count_as_zero():
    session = DriverSession(driver_id="drv", version=7)
    assert session_stamp(orjson.dumps({**session.to_dict(), "fence": 123})) == (123, 7)
    assert session_stamp(orjson.dumps(session.to_dict())) == (0, 7)
    assert session_stamp(None) is None
    assert DriverSession.from_dict(orjson.loads(orjson.dumps({**session.to_dict(), "fence": 1}))) == session


def test_only_a_write_right_after_the_persisted_offset_moves_it():
    assert advances_persisted_offset(None, 0) and advances_persisted_offset(None, 57)
    assert advances_persisted_offset(170, 171)
    # The zombie run: its store had 171; the new owner wrote 201-380; its own late write came back at 412.
    assert not advances_persisted_offset(171, 412)
