"""Which table entries a partition growth moves (infra.repartition.moves): the live ones whose key
hashes to another partition now, and none twice when a run cut short is run again."""

from __future__ import annotations

from infra.repartition import Move, moves
from infra.topics import key_partition

KEYS = [f"drv_{i}".encode() for i in range(40)]


def _at(partitions: int) -> dict[tuple[int, bytes], bytes | None]:
    return {(key_partition(key, partitions), key): b"session of " + key for key in KEYS}


def test_live_entries_on_another_partition_move_to_their_keys_partition():
    found, already = moves(_at(2), 4)
    assert already == 0
    assert {move.key for move in found} == {k for k in KEYS if key_partition(k, 2) != key_partition(k, 4)}
    assert all(move.target == key_partition(move.key, 4) and move.value == b"session of " + move.key
               for move in found)


def test_deleted_entries_and_entries_in_place_stay():
    latest = _at(2)
    moved = next(key for key in KEYS if key_partition(key, 2) != key_partition(key, 4))
    latest[(key_partition(moved, 2), moved)] = None
    found, _ = moves(latest, 4)
    assert moved not in {move.key for move in found}
    assert moves(_at(4), 4) == ([], 0)


def test_an_entry_copied_before_a_run_was_cut_short_is_only_deleted_from_its_old_partition():
    latest = _at(2)
    key = next(k for k in KEYS if key_partition(k, 2) != key_partition(k, 4))
    source = key_partition(key, 2)
    latest[(key_partition(key, 4), key)] = b"newer, on the new partition"
    found, already = moves(latest, 4)
    assert already == 1
    assert Move(key, b"session of " + key, source, source) in found
