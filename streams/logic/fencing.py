"""Fencing tokens: which of two writers of a driver's state owns it now, so a paused worker's late
writes (to the Redis index or to the sessions changelog) can never overwrite the new owner's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

# (fence token of the writer, the session's version): the larger pair is the newer state.
Stamp = tuple[int, int]


@dataclass
class Fence:
    """This worker's token: the wall-clock millisecond of its latest partition assignment, kept
    strictly increasing. A worker that lost its partitions without noticing (paused past its session
    timeout) still holds the token of its previous assignment, which is older than the new owner's
    by at least the session timeout. Unlike the consumer group's generation, it does not restart at
    1 when the group is deleted and created again (its offsets expired after a long stop). It asks
    the workers' clocks to agree to better than the session timeout."""

    token: int = 0

    def advance(self, now_ms: int) -> int:
        self.token = max(now_ms, self.token + 1)
        return self.token


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
