"""Every candidate of the selection (selection.py's step 2), fitted on the seen flights: centring,
the whitenings, each kind's maps for each K over the rounds of flight pairing, AGRA, and the
fusions of the maps and AGRA with the teacher space.

Map rank (`select.map_rank`, `select.other_map_ranks`): a kind's maps act on the `map_rank`
leading principal directions; with other ranks given (4096: the whole descriptor, ranks capped
at its width), each round first fits one map of the kind at every rank and keeps the rank the
selection's `choose` takes among those probes (its one-standard-error rule: the smallest rank
within one standard error of the best, so a larger map must earn its rank² fitted numbers on
the held-out locations). Only that rank's maps are fitted for every K. A map at another rank
says so in its name (`ridge(2, rank 1200)`), so that a refit fits it again by name.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import candidates as cand
from .criterion import seen_claims
from .headset import Heads


def candidates(views: cand.TrainViews, cfg, seed: int, train_agra: Callable | None, score, log: Callable,
               chain: list | None = None, only: str | None = None, choose: Callable | None = None):
    """Fit every candidate on `views` (the seen flights). With `score` (heads -> criterion) the
    best unpaired candidate becomes the teacher space that pairs flights with satellites, and
    each further round pairs them again in the best map's space while that scores higher;
    `choose` ({name: heads} -> name; default: the best `score`) takes each kind's map rank. A
    refit passes the `chain` of pairing spaces found instead, and `only` the candidate it
    needs. -> ({name: Heads}, chain)."""
    centre = cand.centring(views)
    basis = cand.principal_basis(centre, views)
    out = {"centre": centre}
    dim = basis.axes.shape[0]
    for latent in sorted({min(L, dim) for L in cfg.latents}):
        out[f"whiten({latent})"] = cand.whitening(centre, basis, latent)
    if chain is None:
        chain = [max(out, key=lambda n: score(out[n]))]
        log(f"teacher space for the flight pairs: {chain[0]}")
    if score is not None and choose is None:
        choose = lambda probes: max(probes, key=lambda n: score(probes[n]))   # noqa: E731
    rounds = cfg.rounds if score is not None else len(chain)
    for round_ in range(rounds):
        fit = _RoundFit(centre, basis, views, out[chain[round_]], cfg, seed, round_)
        needed = lambda name: _needed(name, round_, rounds, chain, score, only)   # noqa: E731
        maps = {}
        for kind in cfg.map_kinds:
            maps.update(fit.kind_maps(kind, needed, choose, log))
        out.update(maps)
        if score is None or round_ + 1 == rounds:
            continue
        # the flights are paired again in one vector an image: a best-of-maps space has K
        best = max((n for n in maps if maps[n].vectors("drone") == 1), key=lambda n: score(maps[n]))
        if score(maps[best]) <= score(out[chain[-1]]):
            break
        chain.append(best)                                 # pair again in the best map's space
        log(f"flight pairs rebuilt in the space of {best}")
    if cfg.agra and train_agra is not None:
        out["agra"] = train_agra(centre, out[chain[-1]], _agra_views(views, cfg, out[chain[-1]]))
    teacher = chain[0]
    for name in [n for n in out if n.startswith((*cfg.map_kinds, "agra"))]:
        for w in cfg.fusion_weights:
            out[f"{w:g} {name} + {1 - w:g} {teacher}"] = out[name].with_streams(
                out[name].streams + out[teacher].streams, [w, 1 - w])
    return out, chain


def _agra_views(views: cand.TrainViews, cfg, pairing: Heads) -> cand.TrainViews:
    """AGRA learns from every satellite it is given, unpaired ones too: it gets only those the
    seen flights claim, so that a held-out flight's satellite is as new to it as a test
    location's (otherwise the criterion flatters it)."""
    if cfg.holdout_by != "flights":   # held-out regions' satellites are out of `views` already
        return views
    claimed = seen_claims(pairing, views, np.zeros(len(views.groups), bool))
    return cand.TrainViews({k: v[claimed] for k, v in views.sat.items()}, views.drone, views.groups, views.layers)


def map_ranks(cfg, dim: int) -> list[int]:
    """The map ranks a kind's maps may take, capped at the descriptor's width `dim`: `map_rank`
    first (the names without a rank), then the other ranks, ascending, each once."""
    base = min(cfg.map_rank, dim)
    return [base] + sorted({min(int(r), dim) for r in cfg.other_map_ranks} - {base})


def map_names(kind: str, k: int, rank: int | None, tag: str, best_of: bool) -> dict:
    """{gate: name} of a kind's K maps (rank None: at `map_rank`, no rank in the name)."""
    at = "" if rank is None else f", rank {rank}"
    names = {"lda": f"{kind}({k}{at}){tag}", "subspace": f"{kind}({k}{at}, subspace gate){tag}"}
    if best_of:
        names["best"] = f"{kind}({k}{at}, best of maps){tag}"
    return names


class _RoundFit:
    """One round's maps: the flights paired with satellites in the round's `pairing` space
    (computed once, shared by every kind and rank), each kind's map pairs per rank."""

    def __init__(self, centre: Heads, basis: cand.Basis, views, pairing: Heads, cfg, seed: int, round_: int):
        self.centre, self.basis, self.views, self.pairing, self.cfg, self.seed = centre, basis, views, pairing, cfg, seed
        # a later round's maps are other models (paired in another space): other names, so the
        # map that paired the flights is never overwritten by its refit
        self.tag = "" if round_ == 0 else f" r{round_ + 1}"
        self.ranks = map_ranks(cfg, basis.axes.shape[0])
        self._flight_xy, self._pairs = None, {}

    def pairs(self, kind: str, rank: int) -> cand.MapPairs:
        if (kind, rank) not in self._pairs:
            if self._flight_xy is None:
                self._flight_xy = cand.flight_pairs(self.centre, self.views, self.pairing)
            self._pairs[kind, rank] = cand.map_pairs(self.centre, self.basis, self.views, self.pairing, self.seed,
                                                     kind, rank, self.cfg.ridge_folds, self._flight_xy)
        return self._pairs[kind, rank]

    def fit(self, kind: str, rank: int, ks, needed: Callable) -> dict:
        """{name: heads} of the needed maps of `kind` at `rank` for each K of `ks`."""
        out = {}
        for k in ks:
            names = map_names(kind, k, None if rank == self.ranks[0] else rank, self.tag, self.cfg.best_of_maps)
            if any(needed(n) for n in names.values()):
                fitted = cand.maps(self.centre, self.views, self.pairs(kind, rank), k, self.seed)
                out.update({names[gate]: heads for gate, heads in fitted.items() if gate in names})
        return out

    def kind_maps(self, kind: str, needed: Callable, choose: Callable | None, log: Callable) -> dict:
        """The kind's maps for every K: at every rank a refit needs (by name), or in a selection
        (`choose` given) at the rank `choose` takes among one map at each rank."""
        if choose is None or len(self.ranks) == 1:
            return {n: h for rank in self.ranks for n, h in self.fit(kind, rank, self.cfg.n_maps, needed).items()}
        probes = {rank: self.fit(kind, rank, [1], needed) for rank in self.ranks}
        by_name = {name: (rank, heads) for rank, fitted in probes.items() for name, heads in fitted.items()}
        chosen = choose({name: heads for name, (_, heads) in by_name.items()})
        rank = by_name[chosen][0]
        log(f"{kind} maps{self.tag}: rank {rank} ({chosen} among {', '.join(by_name)})")
        rest = self.fit(kind, rank, [k for k in self.cfg.n_maps if k != 1], needed)
        return {**(probes[rank] if 1 in self.cfg.n_maps else {}), **rest}


def _needed(name: str, round_: int, rounds: int, chain: list, score, only: str | None) -> bool:
    """A refit fits only the maps that pair flights for a later round and those the candidate
    it returns is made of (by name, exactly)."""
    if score is not None or only is None:
        return True
    return (round_ + 1 < rounds and name == chain[round_ + 1]) or name in components(only)


def components(name: str) -> set[str]:
    """The candidates a fused candidate's name (`"w A + w' B"`) is made of; else the name."""
    if " + " not in name:
        return {name}
    first, second = name.split(" + ", 1)
    return {first.split(" ", 1)[1], second.split(" ", 1)[1]}
