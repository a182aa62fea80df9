"""Fence tokens: taken from the fences topic on each assignment, never from a clock; and which changelog
entries a restore keeps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
from hypothesis import given
from hypothesis import strategies as st

import streams.app
from infra.settings import Settings
from streams.app import DispatchApp
from streams.logic.fencing import FENCE_BASE, Fence, advances_persisted_offset, entries_to_keep, fence_in_time
from streams.logic.sessions import DriverSession
from streams.tables import session_stamp


def test_the_token_follows_the_fences_records_offset_and_never_goes_back():
    fence = Fence()
    assert fence.advance(0) == FENCE_BASE
    assert fence.advance(7) == FENCE_BASE + 7
    # A fences topic deleted and created again restarts its offsets: the token still grows.
    assert fence.advance(2) == FENCE_BASE + 8
    assert fence.advance(9) == FENCE_BASE + 9


@given(st.lists(st.integers(0, 1), min_size=1, max_size=40))
def test_the_worker_assigned_last_holds_the_higher_token(assigned_in_turn):
    # Worker 0 or 1 takes each next fences record, in the broker's order: the newest owner always wins.
    workers = (Fence(), Fence())
    for offset, newest in enumerate(assigned_in_turn):
        workers[newest].advance(offset)
        assert workers[newest].token > workers[1 - newest].token


def test_every_token_beats_every_wall_clock_token_of_earlier_releases_and_stays_exact_in_lua():
    year_2100_ms = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert Fence().advance(0) > year_2100_ms
    # Redis's Lua compares tokens as doubles: exact up to 2**53, a billion assignments a day for 24 years.
    token = Fence().advance(10**9 * 365 * 24)
    assert float(token) == token and float(token + 1) != float(token) and token < 2**53
    # The changelog filter judges an upgrade's first write newer than the release's last one.
    assert entries_to_keep([(b"drv", (Fence().advance(0), 1))], lambda key: (year_2100_ms, 9)) == [0]


def test_a_token_whose_record_took_half_a_session_timeout_is_not_trusted():
    assert fence_in_time(0.02, 6.0) and fence_in_time(2.9, 6.0)
    assert not fence_in_time(3.0, 6.0) and not fence_in_time(40.0, 30.0)


def test_an_assignment_takes_the_token_of_its_fences_record_unless_the_record_landed_late(monkeypatch):
    app = DispatchApp(Settings())
    offsets = iter([5, 9])

    async def appended(partitions: int) -> int:
        return next(offsets)

    rejoins: list = []
    monkeypatch.setattr(app, "_append_fence_record", appended)
    monkeypatch.setattr(streams.app, "_request_rejoin", rejoins.append)
    asyncio.run(app._advance_fence(app, assigned=set()))
    assert (app.runtime.fence.token, app._fence_taken.is_set(), rejoins) == (FENCE_BASE + 5, True, [])
    # Later than half a session timeout: the group may have another owner with a lower token by now.
    monkeypatch.setattr(streams.app, "fence_in_time", lambda took_s, session_timeout_s: False)
    app._fence_taken.clear()
    asyncio.run(app._advance_fence(app, assigned=set()))
    assert (app.runtime.fence.token, app._fence_taken.is_set(), rejoins) == (FENCE_BASE + 5, True, [app.consumer])


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
