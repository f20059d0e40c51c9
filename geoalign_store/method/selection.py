"""Label-free choice among the candidate heads (issue 8), on the train split alone.

1. Before anything is fitted, whole train locations are held out (holdout.py: seeded regions of
   satellites with their flights; `holdout_by=flights`: a seeded fraction of the flights only).
2. Every candidate is fitted on what is left (candidate_set.py, from candidates.py's pieces;
   AGRA through a callback, so the stage can checkpoint it); with `other_map_ranks`, each kind's
   map rank is the smallest within one standard error of the best among one map at each rank.
3. The criterion of a candidate, in its own space (`criterion`): the seen flights claim
   satellites one-to-one and the held-out flights are assigned one-to-one to the unclaimed ones
   from half of their images (`held_pairing=seen_first`, the default; `joint`: all flights are
   assigned together; `seen_on_seen`: no seen flight claims a held-out satellite), and each
   image of the other half, retrieving among *all* satellites, counts as right when it picks
   its flight's satellite. A space that pairs flights wrongly
   gives the held-out flights the wrong satellites; a space where a flight-wide bias keeps a
   flight's images together but away from its satellite has them pick satellites that other
   flights hold; no image votes for its own pseudo-label.
4. The smallest candidate near the best one is the pick. It wins only when its gain over
   centring is larger than `margin_se` standard errors of the paired difference (and than
   `min_gain`); otherwise the heads are centring: never worse than centring by the criterion's
   own measure. With `confirm_folds` > 0 that gain is measured on every flight (confirmation.py):
   the other flights are held out fold by fold while the pick and centring are refitted without
   them, and join the pick's own held-out flights, which are few.
   With `second_opinion=joint_held` (the default) the pick must also gain, on the same flights,
   by the joint pairing with the held-out null, whose bias lies elsewhere.
5. The winner is refitted on all flights when it is closed-form (AGRA is trained once).
No cross-view label is read: drone group ids only group a flight's images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import numpy as np

from ..config import ConfigError
from . import candidates as cand
from .confirmation import Gate, confirm, confirm_folds, decide_all, flight_se
from .holdout import Holdout, flights_only, region_folds
from .candidate_set import candidates
from .criterion import Rows, adjusted, read, stream_order
from .turns import NULL_TURNS, Turns
from .headset import Heads
from .training import FitHeadsSection


@dataclass
class SelectionConfig(FitHeadsSection):
    """fit-heads' `select:` section (documented and defaulted in configs/stage/fit-heads.yaml)."""
    holdout: float
    latents: tuple
    n_maps: tuple
    map_kinds: tuple
    fusion_weights: tuple
    agra: bool
    margin_se: float
    min_gain: float
    map_rank: int
    other_map_ranks: tuple
    rounds: int
    null_adjust: bool
    confirm_folds: int
    holdout_by: str
    one_se_pool: str
    held_pairing: str
    null_of: str
    second_opinion: str
    ridge_folds: int
    best_of_maps: bool
    held_per_flight: int
    SECTION: ClassVar[str] = "select"
    # keys added after heads were first saved, at the value that reproduces heads fitted before
    # the key existed (their fingerprint leaves the key out at that value). Not defaults: the
    # recipe's defaults are fit-heads.yaml's.
    KEYS_ADDED: ClassVar[dict] = {"null_adjust": False, "confirm_folds": 0, "holdout_by": "flights",
                                  "one_se_pool": "all", "held_pairing": "seen_first",
                                  "null_of": "all", "second_opinion": "none", "ridge_folds": 1,
                                  "best_of_maps": False, "held_per_flight": 0,
                                  "other_map_ranks": []}
    CHOICES: ClassVar[dict] = {"map_kinds": ("ridge", "orth"), "holdout_by": ("regions", "flights"),
                               "one_se_pool": ("family", "all"), "held_pairing": ("joint", "seen_first", "seen_on_seen"),
                               "null_of": ("all", "held"), "second_opinion": ("none", "joint_held")}

    def __post_init__(self):
        """Values checked when the recipe is composed, not minutes into a fit."""
        for key, valid in self.CHOICES.items():
            given = getattr(self, key)
            for value in (given if isinstance(given, tuple) else (given,)):
                if value not in valid:
                    raise ConfigError(f"select.{key}: {value!r} is not one of {', '.join(valid)}")
        for key in ("latents", "n_maps"):
            if not getattr(self, key) or any(int(v) < 1 for v in getattr(self, key)):
                raise ConfigError(f"select.{key}: a non-empty list of integers >= 1, got {list(getattr(self, key))}")
        if any(not 0 < float(w) < 1 for w in self.fusion_weights):
            raise ConfigError(f"select.fusion_weights: weights strictly between 0 and 1, got {list(self.fusion_weights)}")
        if self.held_per_flight < 0 or self.held_per_flight == 1:
            raise ConfigError("select.held_per_flight: images a held-out flight's criterion reads, 0 (every one) or "
                              f">= 2 (its images vote in two halves), got {self.held_per_flight}")
        if not 1 <= self.ridge_folds <= 5:
            raise ConfigError(f"select.ridge_folds: how many of the flights' five fifths judge the ridge shrinkage, "
                              f"1 to 5, got {self.ridge_folds}")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.other_map_ranks):
            raise ConfigError("select.other_map_ranks: ranks >= 1 (4096: the whole descriptor), "
                              f"got {list(self.other_map_ranks)}")
        if self.confirm_folds < 0 or not 0 < self.holdout < 1 or self.rounds < 1 or self.map_rank < 1:
            raise ConfigError("select: confirm_folds >= 0, 0 < holdout < 1, rounds >= 1 and map_rank >= 1 "
                              f"(got {self.confirm_folds}, {self.holdout}, {self.rounds}, {self.map_rank})")

    @classmethod
    def from_config(cls, section: dict) -> "SelectionConfig":
        """From fit-heads' `select` section (YAML lists become tuples; `enabled` is the stage's)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k != "enabled"})


@dataclass
class Selection:
    heads: Heads                              # the chosen heads (refitted when closed-form)
    chosen: str
    estimates: dict                           # candidate name -> criterion
    fitted: dict = field(default_factory=dict)  # candidate name -> Heads fitted without the held-out flights
    teacher: str = ""
    held_out_flights: int = 0
    reason: str = ""
    gate_flights: int = 0                     # flights the gain over centring was measured on
    spread: dict = field(default_factory=dict)  # name -> its size and standard errors (see `spread`)

    def summary(self) -> dict:
        return {"chosen": self.chosen, "heads": self.heads.describe(), "estimates": self.estimates,
                "centring_estimate": self.estimates.get("centre"), "teacher_space": self.teacher,
                "held_out_flights": self.held_out_flights, "gate_flights": self.gate_flights,
                "reason": self.reason}


def holdout_mask(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Drone rows of a seeded `fraction` of the flights (at least one, never all)."""
    ids = np.unique(groups)
    n = min(len(ids) - 1, max(1, int(round(fraction * len(ids))))) if fraction > 0 else 0
    picked = np.random.default_rng(seed).choice(ids, n, replace=False) if n > 0 else []
    return np.isin(groups, picked)


def holdouts(views: cand.TrainViews, cfg: SelectionConfig, seed: int) -> tuple[Holdout, list[Holdout]]:
    """What the selection holds out and, for the gate's confirmation, the folds of the rest."""
    if cfg.holdout_by == "regions":
        return region_folds(views, cfg.holdout, cfg.confirm_folds, seed)
    held = holdout_mask(views.groups, cfg.holdout, seed)
    folds = confirm_folds(views.groups, held, cfg.confirm_folds, seed) if cfg.confirm_folds else []
    return flights_only(views, held), [flights_only(views, f) for f in folds]


def select(views: cand.TrainViews, cfg: SelectionConfig, seed: int, train_agra: Callable | None = None,
           log: Callable = print) -> Selection:
    split, folds = holdouts(views, cfg, seed)
    held = split.drone
    rows = Rows(views, split, pairing=cfg.held_pairing, null_of=cfg.null_of, held_per_flight=cfg.held_per_flight)
    turns = [Turns(seed, i) for i in range(NULL_TURNS)] if cfg.null_adjust else []
    readings: dict = {}   # id(heads) -> (heads, its Reading, its criterion in its own space)

    def score(heads: Heads) -> float:
        if id(heads) not in readings:   # keeps `heads` alive, so its id is never reused
            reading = read(heads, rows, turns, own_claims=True)
            readings[id(heads)] = (heads, reading, adjusted(reading))
        return readings[id(heads)][2][0]

    def smallest_near_best(options: dict) -> str:   # a kind's map rank (candidate_set.py)
        for heads in options.values():
            score(heads)
        results = {n: readings[id(h)][2] for n, h in options.items()}
        sizes = {n: h.size() for n, h in options.items()}
        return _smallest_near_best(results, spread(results, rows.groups["held"], sizes))

    fitted, chain = candidates(split.seen(views), cfg, seed, train_agra, score, log, choose=smallest_near_best)
    results = ranked(fitted, fitted[chain[-1]], rows, turns, {k: v[1] for k, v in readings.items()})
    readings.clear()   # the readings hold ~8 MB each at University-1652 size
    margins = spread(results, rows.groups["held"], {n: h.size() for n, h in fitted.items()})
    pick, rule = _pick(results, margins, cfg.one_se_pool)
    where = "held-out regions' flights" if split.of_locations else "held-out flights"
    estimates, pair = _gate_estimates(cfg, split), {n: fitted[n] for n in ("centre", pick)}
    by_estimate = [results] + [ranked(pair, fitted[chain[-1]], rows.estimated_by(pairing, null_of), turns)
                               for _, pairing, null_of in estimates[1:] if pick != "centre"]
    gates = [Gate(pick, r[pick][1] - r["centre"][1], rows.groups["held"], where) for r in by_estimate]
    if pick != "centre" and folds and not _trained_once(pick):
        gates = confirm(gates, views, folds, lambda seen_views: _fold_fit(pick, seen_views, cfg, seed, chain),
                        _fold_rank(estimates, views, turns, cfg.held_per_flight))
    chosen, reason = decide_all(gates, [name for name, _, _ in estimates], cfg.margin_se, cfg.min_gain, rule)
    heads = _refit(chosen, fitted[chosen], views, cfg, seed, chain)
    heads.name = chosen
    return Selection(heads, chosen, {name: r[0] for name, r in results.items()}, fitted, " -> ".join(chain),
                     int(len(np.unique(views.groups[held]))), reason, gates[0].flights, margins)


def _gate_estimates(cfg: SelectionConfig, split: Holdout) -> list[tuple[str, str, str]]:
    """(name, held_pairing, null_of) of each estimate the pick's gain must pass: the selection's
    own, and with select.second_opinion=joint_held (held-out locations) the joint pairing with
    the held-out satellites' null, whose biases lie elsewhere: the default is pessimistic for a
    space that pairs some seen flights wrongly (they take held-out satellites first), the joint
    one with that null for a centring that is already right (README, Heads)."""
    own = [("the selection's estimate", cfg.held_pairing, cfg.null_of)]
    if cfg.second_opinion == "joint_held" and split.of_locations:
        return own + [("the joint pairing with the held-out null", "joint", "held")]
    return own


def _fold_rank(estimates: list, views: cand.TrainViews, turns: list, held_per_flight: int) -> Callable:
    """rank(fit, fold) for `confirm`: the fold's criterion by every estimate, all reading one
    `Rows` of the fold (its embeddings made once), and the flight of each image they read."""
    def rank(fit, fold) -> tuple[list[dict], np.ndarray]:
        rows = Rows(views, fold, held_per_flight=held_per_flight)
        return ([ranked(fit[0], fit[1], rows.estimated_by(pairing, null_of), turns) for _, pairing, null_of in estimates],
                rows.groups["held"])
    return rank


def ranked(fitted: dict, pairing: Heads, rows: Rows, turns: list, readings: dict | None = None) -> dict:
    """{name: (criterion, per held-out image)}. Held-out flights: against one claimed set, from
    the space the maps and AGRA took their flight pairs from (a candidate that memorised those
    pairs gains nothing over one that did not). Held-out locations: each candidate against its
    own claims (the held-out satellites left every fit, so no memorised pair reaches them).
    `readings`: {id(heads): Reading} already taken (the selection reads the teacher and map
    spaces once for their own criterion: a reading serves any claimed set).
    Read in `stream_order` (each stream embedded once), returned in `fitted`'s order."""
    readings = readings or {}

    def reading(heads: Heads, own_claims: bool = False):
        return readings.get(id(heads)) or read(heads, rows, turns, own_claims)

    # held-out locations: every space pairs its own seen flights (claims None: the reading's own)
    claims = None if rows.claims_per_space else reading(pairing, own_claims=True).own_claims
    measured = {name: adjusted(reading(fitted[name], claims is None), claims) for name in stream_order(fitted)}
    return {name: measured[name] for name in fitted}


def _pick(results: dict, margins: dict, pool: str = "family") -> tuple[str, str]:
    """The smallest candidate (fewest fitted numbers) whose criterion is within one standard
    error of the best one's (the one-standard-error rule: a near-tie on a few dozen held-out
    flights is noise, and the simpler model generalises at least as well), among centring and
    the best one's `family` (pool="family"; "all": every candidate, the rule before). The rule
    orders nested models, where fewer fitted numbers is less variance: K maps against one, a
    wider whitening, a fusion against the map it fuses. Across families the count does not say
    which carries over (a whitening's numbers are drone statistics, a map's are fitted to flight
    pairs: on `altitude` a whitening 'smaller' than the maps, within one standard error of them
    on 120 flights of 4 views, retrieved at 23.5 where the best map reached 58.5). `margins`:
    `spread`'s. -> (pick, rule)"""
    best = max(results, key=lambda n: results[n][0])
    pooled = [n for n in results if pool == "all" or n == "centre" or family(n) == family(best)]
    pick = _smallest_near_best({n: results[n] for n in pooled}, margins)
    if pick == "centre":
        return "centre", f"no candidate is estimated better than centring (best: {best})"
    return pick, "" if pick == best else f"; the smallest within one standard error of the best, {best}"


def _smallest_near_best(results: dict, margins: dict) -> str:
    """The candidate of `results` with the fewest fitted numbers whose criterion is within one
    standard error (`margins`' se_to_best) of the best one's; the higher criterion on a tie."""
    best = max(results[n][0] for n in results)
    near = [n for n in results if results[n][0] >= best - margins[n]["se_to_best"]]
    return min(near, key=lambda n: (margins[n]["size"], -results[n][0]))


def family(name: str) -> str:
    """A candidate's family: centre, whiten, maps (ridge and orth: linear maps, orth the
    constrained one), agra; a fusion belongs to the family of what it fuses with the teacher
    space (its first part)."""
    first = name.split(" + ")[0].split(" ", 1)[1] if " + " in name else name
    kind = first.split("(")[0]
    return "maps" if kind in ("ridge", "orth") else kind


def spread(results: dict, held_groups: np.ndarray, size: dict) -> dict:
    """For every candidate: its fitted numbers and the flight standard errors of its paired
    differences with the best candidate and with centring (what `_pick` and the gate weigh;
    None without centring among `results`: a kind's map ranks)."""
    _, flight = np.unique(held_groups, return_inverse=True)
    best = max(results, key=lambda n: results[n][0])
    return {n: {"size": int(size[n]), "se_to_best": flight_se(results[best][1] - r[1], flight),
                "se_to_centre": flight_se(r[1] - results["centre"][1], flight) if "centre" in results else None}
            for n, r in results.items()}


def _trained_once(name: str) -> bool:
    """AGRA-based candidates are trained once (without the held-out flights), never refitted."""
    return "agra" in name


def _fit_again(chosen: str, views: cand.TrainViews, cfg: SelectionConfig, seed: int, chain: list) -> dict:
    """The closed-form candidates `chosen` needs, fitted on `views` with the pairing spaces the
    selection found (`chain`): {name: Heads}, with centring and those spaces."""
    return candidates(views, replace(cfg, agra=False), seed, None, None, lambda *_: None, list(chain),
                      only=chosen)[0]


def _refit(chosen: str, heads: Heads, views: cand.TrainViews, cfg: SelectionConfig, seed: int,
           chain: list) -> Heads:
    """The chosen closed-form candidate again, on every flight, with the pairing spaces the
    selection found; AGRA-based ones stay as trained (once, without the held-out flights)."""
    if _trained_once(chosen):
        return heads
    if chosen == "centre":
        return cand.centring(views)
    return _fit_again(chosen, views, cfg, seed, chain)[chosen]


def _fold_fit(pick: str, views: cand.TrainViews, cfg: SelectionConfig, seed: int, chain: list):
    """For a confirmation fold: ({"centre", pick} fitted on `views`, the pairing space)."""
    fitted = _fit_again(pick, views, cfg, seed, chain)
    return {n: fitted[n] for n in ("centre", pick)}, fitted[chain[-1]]
