"""The do-no-harm gate of the label-free selection: does the pick beat centring? (issue 8)

The selection picks among dozens of candidates on one set of held-out flights (20% of them), so
the pick's gain over centring rests on few flights. With `select.confirm_folds` = K it is measured
on every flight instead: the other flights, split into K seeded folds, are held out in turn while
the pick and centring are refitted without them (closed-form candidates only: AGRA is trained
once), and their paired differences join the pick's own held-out ones, i.e. a (K+1)-fold
cross-validation over flights of the chosen recipe. The pick's own fold flatters it a little (it
won there), but it is one fold in K+1; the refits also show how the recipe varies with the flights
it is fitted on, which one fit cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def flight_se(diff: np.ndarray, flight: np.ndarray) -> float:
    """Standard error of a mean per-image difference with flights as the independent units (a
    flight's images share its conditions)."""
    per_flight = np.bincount(flight, diff) / np.bincount(flight)
    return float(per_flight.std(ddof=1) / np.sqrt(len(per_flight))) if len(per_flight) > 1 else np.inf


@dataclass
class Gate:
    """The pick's gain over centring, per image, and the flights of those images."""
    pick: str
    diff: np.ndarray
    groups: np.ndarray
    where: str

    @property
    def flights(self) -> int:
        return int(len(np.unique(self.groups)))

    def decide(self, margin_se: float, min_gain: float, rule: str = "") -> tuple[str, str]:
        """-> (chosen, reason): the pick when it gains more than `margin_se` standard errors of
        the paired difference and more than `min_gain`, else centring."""
        if self.pick == "centre":
            return "centre", rule
        gain, se = float(self.diff.mean()), flight_se(self.diff, np.unique(self.groups, return_inverse=True)[1])
        where = f"over {self.flights} {self.where}"
        if gain <= max(margin_se * se, min_gain):
            bar = (f"within {margin_se:g} standard errors" if margin_se > 0 else
                   f"under {min_gain:g}" if min_gain > 0 else "no gain")
            return "centre", f"{self.pick} gains {gain:+.3f} over centring, {bar} ({se:.3f}, {where}): centring kept{rule}"
        return self.pick, f"gains {gain:+.3f} over centring (standard error {se:.3f}, {where}){rule}"


def confirm_folds(groups: np.ndarray, held: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """Row masks of the flights outside `held`, split into up to `n` seeded folds of whole
    flights (never one that leaves fewer than two flights to fit on)."""
    rest = np.unique(groups[~held])
    order = np.random.default_rng([seed, 0xC0F]).permutation(rest)
    parts = [p for p in np.array_split(order, min(n, len(rest))) if len(p) and len(rest) - len(p) >= 2]
    return [np.isin(groups, p) for p in parts]


def confirm(firsts: list[Gate], views, folds: list, refit: Callable, rank: Callable) -> list[Gate]:
    """Each of `firsts` (the pick's gain on its own held-out part, by one estimate each) joined by
    its gain on every fold (holdout.Holdout: flights, or whole regions with their satellites):
    refit(seen views) -> (fitted {"centre", pick}, pairing space) without the fold, once per fold
    whatever the estimates; rank(that, fold) -> one {name: (criterion, per image)} on the fold's
    flights per estimate, in the order of `firsts`, and the flight of each image they read."""
    pick = firsts[0].pick
    diffs, groups = [[g.diff] for g in firsts], [firsts[0].groups]
    for fold in folds:
        by_estimate, fold_groups = rank(refit(fold.seen(views)), fold)
        for diff, results in zip(diffs, by_estimate):
            diff.append(results[pick][1] - results["centre"][1])
        groups.append(fold_groups)
    where = "flights of regions, each held out once" if folds and folds[0].of_locations else "flights, each held out once"
    return [Gate(pick, np.concatenate(d), np.concatenate(groups), where) for d in diffs]


def decide_all(gates: list[Gate], names: list[str], margin_se: float, min_gain: float,
               rule: str = "") -> tuple[str, str]:
    """The pick when it clears the first gate (`margin_se` standard errors and `min_gain`) and
    every further estimate (`names` say which) agrees that it gains (more than 0), else
    centring, with the refusing gate's reason: a gain one estimate finds where an estimate
    biased otherwise finds a loss is that first estimate's bias (select.second_opinion). The
    further estimates' own two standard errors were measured too and refused more than they
    saved (README, Heads: `altitude` 90.1 -> 1.5)."""
    chosen, reason = gates[0].decide(margin_se, min_gain, rule)
    for gate, name in zip(gates[1:], names[1:]):
        if chosen == "centre":
            break
        chosen, second = gate.decide(0.0, 0.0)
        reason = f"{reason}; by {name}: {second}" if chosen != "centre" else f"by {name}: {second}{rule}"
    return chosen, reason
