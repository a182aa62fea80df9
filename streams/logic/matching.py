"""Batched matching: the orders of a window and their candidates matched together, first as many
orders served as possible, then the highest total seed-003 score (an optimal assignment), where
greedy gives each order in turn its best candidate still free and may take the only driver of the next.

Orders that share no candidate cannot affect each other: each group of orders linked by shared
candidates is solved on its own, so a window's cost grows with its contested groups, not its size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from streams.logic.scoring import Candidate


def optimal(options: Sequence[Sequence[Candidate]]) -> list[int | None]:
    """For each order (its candidates best first, as streams.logic.assignment.rank gives them), the
    position of the candidate it is matched to, or None: no driver twice, as many orders served as any
    matching serves, and of those matchings one with the highest total score."""
    chosen: list[int | None] = [None] * len(options)
    for orders in _contested_groups(options):
        if len(orders) == 1:
            chosen[orders[0]] = 0  # alone with its candidates: its best
            continue
        drivers = sorted({c.driver_id for i in orders for c in options[i]})
        column = {driver_id: j for j, driver_id in enumerate(drivers)}
        # A pair that is not an edge weighs 0; an edge weighs `one_more` plus its score, and `one_more`
        # is above any total of scores the group can reach, so one order more always outweighs them.
        one_more = 1.0 + sum(max(c.score for c in options[i]) for i in orders)
        weights = np.zeros((len(orders), len(drivers)))
        position = np.full((len(orders), len(drivers)), -1)
        for row, i in enumerate(orders):
            for k, candidate in enumerate(options[i]):
                j = column[candidate.driver_id]
                weights[row, j], position[row, j] = one_more + candidate.score, k
        for row, j in zip(*linear_sum_assignment(weights, maximize=True), strict=True):
            if position[row, j] >= 0:
                chosen[orders[row]] = int(position[row, j])
    return chosen


def _contested_groups(options: Sequence[Sequence[Candidate]]) -> list[list[int]]:
    """The orders with candidates, grouped so that orders sharing a candidate, directly or through
    others, are in one group; each group in the orders' own order."""
    parent = list(range(len(options)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_order_of: dict[str, int] = {}
    for i, candidates in enumerate(options):
        for candidate in candidates:
            other = first_order_of.setdefault(candidate.driver_id, i)
            parent[root(i)] = root(other)
    groups: dict[int, list[int]] = {}
    for i, candidates in enumerate(options):
        if candidates:
            groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def offered(options: Sequence[Sequence[Candidate]], chosen: Sequence[int | None]) -> list[list[Candidate]]:
    """Each order's candidates in the order to try them: its match first, then its others that no
    order of the window was matched to, best first. The reservation takes the first still free, so a
    match lost to another worker meanwhile falls back to a driver no other match needs."""
    matched = {options[i][k].driver_id for i, k in enumerate(chosen) if k is not None}
    lists = []
    for candidates, k in zip(options, chosen, strict=True):
        rest = [c for c in candidates if c.driver_id not in matched]
        lists.append(rest if k is None else [candidates[k], *rest])
    return lists
