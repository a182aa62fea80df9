"""Fencing tokens: which of two writers of a driver's state owns it now, so a paused worker's late
writes (to the Redis index or to the sessions changelog) can never overwrite the new owner's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

# (fence token of the writer, the session's version): the larger pair is the newer state.
Stamp = tuple[int, int]

# Where tokens taken from the fences topic start: 2**42 ms is in the year 2109, above every wall-clock
# token an earlier release wrote into the changelogs and Redis, so that the first owner after an
# upgrade wins over them; and below 2**53, so that Redis's Lua (doubles) still compares tokens exactly.
FENCE_BASE = 2**42


@dataclass
class Fence:
    """This worker's token: on every partition assignment the worker appends a record to the
    single-partition fences topic and takes FENCE_BASE + the record's offset (streams.app), kept
    strictly increasing. The broker orders those offsets and never gives one out twice, so the newest
    owner of a partition always holds the higher token, whatever the workers' clocks say: a worker
    paused past its session timeout still holds the token of its previous assignment. Unlike the
    consumer group's generation, the offsets do not restart when the group is deleted and created
    again (its offsets expired after a long stop), nor when retention empties the topic; only
    deleting the fences topic itself restarts them."""

    token: int = 0

    def advance(self, offset: int) -> int:
        """The token for an assignment whose fences record the broker wrote at `offset`."""
        self.token = max(FENCE_BASE + offset, self.token + 1)
        return self.token


def fence_in_time(took_s: float, session_timeout_s: float) -> bool:
    """Whether a fences record acknowledged `took_s` after its assignment arrived (monotonic clock)
    surely reached the broker before the group could have given the partitions to another worker,
    whose token would then be lower. The group expels a worker only a session timeout after it last
    heard from it, and it heard from it when it handed out the assignment; half of the timeout leaves
    room for the assignment's own way to the worker. A record stuck in a cut link lands late."""
    return took_s < session_timeout_s / 2


def advances_persisted_offset(persisted: int | None, written: int) -> bool:
    """Whether this worker's own changelog write, acknowledged at offset `written`, may become the
    store's persisted offset (where its next restore starts). Only if it directly follows: a gap means
    another worker wrote to the partition meanwhile (this one was paused and lost it), and starting the
    next restore after our write would skip theirs, so the fence filter could never judge them."""
    return persisted is None or written == persisted + 1


def entries_to_keep(
    entries: Iterable[tuple[bytes, Stamp | None]], stored: Callable[[bytes], Stamp | None]
) -> list[int]:
    """Of changelog entries in log order, the positions to apply: each key's entry is kept only if
    its stamp is not older than what the store holds or an entry before it set. An entry without a
    stamp (a deletion) always applies."""
    newest: dict[bytes, Stamp | None] = {}
    kept = []
    for position, (key, stamp) in enumerate(entries):
        current = newest[key] if key in newest else stored(key)
        if stamp is not None and current is not None and stamp < current:
            continue
        newest[key] = stamp
        kept.append(position)
    return kept
