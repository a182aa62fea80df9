"""Supply and demand per H3 cell, as this worker's partitions see them: available drivers counted as
sessions change, answered requests counted over a sliding window, and which shares changed since the
feed (dispatch.supply_demand) was last written. Pure: the worker feeds it and writes what it returns
(streams.supply_demand)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import h3

from schemas.models import ASSIGNED, DEMAND, REFUSED, SUPPLY, feed_key
from streams.logic.sessions import DriverSession

# A share: (cell, source partition).
Share = tuple[str, int]
def available_cell9(session: DriverSession) -> str | None:
    """The resolution-9 cell a driver is available in (online, ACTIVE, on no trip, located), or None.
    The same test as DriverSession.assignable, inlined: it runs at every ping."""
    if session.online and session.trip_id is None and session.eligibility == "ACTIVE":
        return session.h3_res9
    return None


class SupplyCounts:
    """Available drivers per (cell, partition), kept up as sessions change: `saw` costs one dict
    lookup when a driver's availability and resolution-9 cell are as before (most pings), and a parent
    cell and two counts when they are not. Counts of shares that changed since `take_changes` are
    handed out once; a share counted down to 0 is handed out as 0, then forgotten."""

    def __init__(self, resolution: int, partition_of: Callable[[str], int]) -> None:
        self.resolution = resolution
        self._partition_of = partition_of
        # Available drivers: driver -> its resolution-9 cell; and its share.
        self._cell9: dict[str, str] = {}
        self._share: dict[str, Share] = {}
        self.counts: dict[Share, int] = {}
        self._changed: set[Share] = set()
        self._parents: dict[str, str] = {}
        # Whether every session of the worker's partitions has been seen since they were assigned
        # (SessionStore.load_all): until then the counts are a part of the truth, not to be written.
        self.complete = False

    def saw(self, session: DriverSession) -> None:
        """The session as it is now (any change: ping, status, trip, timeout)."""
        cell9 = available_cell9(session)
        if self._cell9.get(session.driver_id) != cell9:
            self._move(session.driver_id, cell9)

    def saw_all(self, sessions: Iterable[DriverSession]) -> None:
        for session in sessions:
            self.saw(session)

    def _move(self, driver_id: str, cell9: str | None) -> None:
        share = self._share.pop(driver_id, None)
        if share is not None:
            del self._cell9[driver_id]
            self.counts[share] -= 1
            self._changed.add(share)
        if cell9 is None:
            return
        parent = self._parents.get(cell9)
        if parent is None:
            parent = self._parents[cell9] = h3.cell_to_parent(cell9, self.resolution)
            if len(self._parents) > PARENTS_KEPT:
                self._parents.clear()
        share = (parent, share[1] if share is not None else self._partition_of(driver_id))
        self._cell9[driver_id], self._share[driver_id] = cell9, share
        self.counts[share] = self.counts.get(share, 0) + 1
        self._changed.add(share)

    def take_changes(self) -> dict[Share, int]:
        """The count of every share changed since the last call; those at 0 are forgotten."""
        changes = {share: self.counts[share] for share in self._changed}
        self._changed.clear()
        for share, count in changes.items():
            if count == 0:
                del self.counts[share]
        return changes

    def clear(self) -> None:
        """Partitions revoked: nothing counted can be trusted any more."""
        self._cell9.clear()
        self._share.clear()
        self.counts.clear()
        self._changed.clear()
        self.complete = False

    @property
    def drivers(self) -> int:
        return len(self._cell9)


# Resolution-9 cells whose parent is remembered (a city's worth), after which the memory starts again.
PARENTS_KEPT = 1 << 17


@dataclass
class Demand:
    requests: int = 0
    assigned: int = 0
    refused: int = 0

    def add(self, outcome: str, step: int) -> None:
        self.requests += step
        if outcome == ASSIGNED:
            self.assigned += step
        elif outcome == REFUSED:
            self.refused += step

    def as_tuple(self) -> tuple[int, int, int]:
        return self.requests, self.assigned, self.refused


class DemandWindow:
    """Answered requests per (cell, partition) over the last `window_ms`: an answer counts from when it
    was given (`add`) until `window_ms` later (`expire`). Times must not go backwards by much: answers
    leave the window in the order they came."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._answers: deque[tuple[int, Share, str]] = deque()
        self.counts: dict[Share, Demand] = {}
        self._changed: set[Share] = set()

    def add(self, at_ms: int, share: Share, outcome: str) -> None:
        self._answers.append((at_ms, share, outcome))
        demand = self.counts.get(share)
        if demand is None:
            demand = self.counts[share] = Demand()
        demand.add(outcome, 1)
        self._changed.add(share)

    def expire(self, now_ms: int) -> None:
        """Takes out the answers given `window_ms` or longer before `now_ms`."""
        answers, cutoff = self._answers, now_ms - self.window_ms
        while answers and answers[0][0] <= cutoff:
            _, share, outcome = answers.popleft()
            self.counts[share].add(outcome, -1)
            self._changed.add(share)

    def take_changes(self) -> dict[Share, tuple[int, int, int]]:
        """(requests, assigned, refused) of every share changed since the last call; those at 0 are
        forgotten."""
        changes = {share: self.counts[share].as_tuple() for share in self._changed}
        self._changed.clear()
        for share, counts in changes.items():
            if counts[0] == 0:
                del self.counts[share]
        return changes

    def merge(self, answers: Iterable[tuple[int, Share, str]]) -> None:
        """Answers read back from the topics (at_ms, share, outcome), given before any counted so far."""
        counted = list(self._answers)
        self._answers = deque()
        for at_ms, share, outcome in sorted([*answers, *counted], key=lambda answer: answer[0]):
            self.add(at_ms, share, outcome)
        # Counted twice by the loop above: once before, once now.
        for _, share, outcome in counted:
            self.counts[share].add(outcome, -1)

    def clear(self) -> None:
        self._answers.clear()
        self.counts.clear()
        self._changed.clear()

    @property
    def answers(self) -> int:
        return len(self._answers)


@dataclass(frozen=True)
class FeedRecord:
    """One write to the feed: a share's counts, or None for a tombstone (the share is all zero)."""

    key: str
    cell: str
    kind: str
    partition: int
    counts: dict[str, int] | None


def supply_records(changes: dict[Share, int]) -> list[FeedRecord]:
    return [FeedRecord(feed_key(cell, SUPPLY, p), cell, SUPPLY, p, {"available_drivers": n} if n else None)
            for (cell, p), n in sorted(changes.items())]


def demand_records(changes: dict[Share, tuple[int, int, int]]) -> list[FeedRecord]:
    return [FeedRecord(feed_key(cell, DEMAND, p), cell, DEMAND, p,
                       {"requests": r, "assigned": a, "refused": x} if r else None)
            for (cell, p), (r, a, x) in sorted(changes.items())]


def orphaned(existing: Iterable[tuple[str, str, int]], kind: str, partitions: set[int],
             current: Iterable[Share]) -> list[FeedRecord]:
    """Tombstones for the feed's shares of `kind` and `partitions` (cell, kind, partition of its live
    keys) that this worker, their owner now, does not count: left by an earlier owner, or by this
    worker before a restart."""
    mine = set(current)
    return [FeedRecord(feed_key(cell, kind, p), cell, kind, p, None)
            for cell, k, p in sorted(set(existing)) if k == kind and p in partitions and (cell, p) not in mine]
