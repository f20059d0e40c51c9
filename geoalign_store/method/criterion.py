"""The label-free criterion of a candidate space (issue 8; selection.py's step 3), and the rows
it embeds.

In a candidate's space each held-out flight gets a satellite from half of its images, and each
image of the other half, retrieving among *all* satellites, counts as right when it picks its
flight's satellite. How the flights get their satellites (`select.held_pairing`, held-out
locations only): `seen_first` (the default) has the seen flights claim satellites one-to-one
and assigns the held-out flights one-to-one to the unclaimed ones; `joint` assigns the seen and
the held-out flights (their voting halves' means) to every satellite together, so that a
held-out flight whose images sit on its satellite keeps it against a seen flight its space pairs
poorly (claiming first, that flight took it and the held-out flight's images counted wrong for
being right); `seen_on_seen` is seen_first without the seen flights' claims on held-out
satellites (a seen flight's satellite is a seen one, so such a claim is known to be wrong).
Criterion minus the true R@1 of those held-out drones, centring, mean over 30
random worlds: seen_first -5.3 points, joint -0.2; with the null subtracted -10.0 and -16.5; but
without the null the joint pairing flatters flights whose images hold together (flightshift:
centring +23; README, Heads), so it is not the default. Held-out locations (holdout.py, the
default): the held-out satellites left every fit too, and each space pairs in its own space,
never in the split's (a fixed claimed set is the split space's pairing: its mistakes would count
as right there and as wrong in every space that avoids them). Held-out flights only
(`holdout_by=flights`, the earlier rule): the seen flights claim first, and `selection.ranked`
measures every candidate against the pairing space's claims, so that a map memorising the pairs
it was fitted on gains nothing from them. With turns (select.null_adjust) the same score against
the satellites reflected at random is subtracted: what a space scores beyond the agreement its
flights' own consistency buys. `select.null_of=held` (held-out locations; not the default)
reflects the held-out satellites alone: the seen flights keep their real satellites to compete
for in the null too, so that the null measures what a held-out flight's consistency buys where
the aligned seen flights still take theirs (reflecting every satellite, an aligned space's seen
flights no longer hold theirs, and the held-out flights' agreement there is taken for chance).

`Rows` holds what every candidate's space embeds (the satellites, the held-out drones, a sample
of the seen flights) and what those embeddings share: the candidates share one centring, and a
fusion is two streams that other candidates have, so each centred input and each stream output
is computed once (bitwise what `Heads.embed` gives).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from . import candidates as cand
from .headset import Heads
from .holdout import Holdout, flights_only
from .spaces import StreamBlock, space_of
from .turns import SatelliteSets, Turns


class Rows:
    """The satellites ("sat"), the held-out drone rows ("held"; up to `held_per_flight` images of
    each held-out flight, 0: all) and up to `per_flight` images of every seen flight ("seen") of
    `views`, embedded in any candidate's space through one cache: each part's centred layers and
    stream inputs, and the last `keep` stream outputs of each part (a stream is reused by the
    fusions that follow it: see `stream_order`). At University-1652 size a held-out part is ~80 MB
    per entry."""

    def __init__(self, views: cand.TrainViews, held, per_flight: int = 8, keep: int = 2,
                 pairing: str = "seen_first", null_of: str = "all", held_per_flight: int = 0):
        split = held if isinstance(held, Holdout) else flights_only(views, np.asarray(held, bool))
        held = split.drone
        held_rows = np.flatnonzero(held)
        if held_per_flight:   # select.held_per_flight: evenly spaced images of each held-out flight
            held_rows = held_rows[cand.flight_sample(views.groups[held_rows], held_per_flight)]
        seen_rows = np.flatnonzero(~held)[cand.flight_sample(views.groups[~held], per_flight)]
        self.views, self.keep = views, keep
        # held-out locations: each space's seen flights claim satellites in that space, never a
        # claimed set fixed when the split was built (that set is the split space's own pairing:
        # its mistakes would count as right there and as wrong in every space that avoids them)
        self.claims_per_space = split.of_locations
        self.split = split
        self._estimate(pairing, null_of)
        self.rows = {"held": held_rows, "seen": seen_rows}
        self.groups = {part: views.groups[r] for part, r in self.rows.items()}
        # the rows whose flight means a reading takes: each half of the held-out images, every seen row
        self.halves = _halves(self.groups["held"])
        self.votes = {"held": [vote for vote, _, _ in self.halves], "seen": [np.ones(len(seen_rows), bool)]}
        self._cache: dict[str, OrderedDict] = {"centred": OrderedDict(), "input": OrderedDict(),
                                               "output": OrderedDict(), "block": OrderedDict()}

    def _estimate(self, pairing: str, null_of: str) -> None:
        split = self.split
        # select.held_pairing=joint (held-out locations only): the seen and the held-out flights
        # are assigned to the satellites together, no side first (see `Reading.scores`)
        self.joint = split.of_locations and pairing == "joint"
        # seen_on_seen: a seen flight's claim on a held-out satellite is not made (see `claimed`)
        self.unclaimable = np.flatnonzero(split.sat) if pairing == "seen_on_seen" else np.zeros(0, int)
        # select.null_of=held (held-out locations only): the null turns the held-out satellites
        # alone, so that the seen flights keep competing for their real ones
        self.turned = np.flatnonzero(split.sat) if null_of == "held" and split.of_locations else None

    def estimated_by(self, pairing: str, null_of: str) -> "Rows":
        """The same rows and embedding cache under another estimate (select.second_opinion: the
        pick and centring are embedded once for both)."""
        other = copy.copy(self)
        other._estimate(pairing, null_of)
        return other

    def embed(self, heads: Heads, part: str) -> np.ndarray:
        with torch.inference_mode():
            return heads.combine([self._output(heads, kind, module, part) for kind, module in heads.streams])

    def stream_block(self, heads: Heads, index: int, part: str, block: StreamBlock | None = None) -> StreamBlock:
        """Stream `index` of `heads` on `part`: what a fusion's reading needs of it (spaces.py),
        or `block` kept as that (a one-stream space's reading made it)."""
        kind, module = heads.streams[index]

        def make() -> StreamBlock:
            if block is not None:
                return block
            with torch.inference_mode():
                rows, sat = (self._output(heads, kind, module, p).float().numpy() for p in (part, "sat"))
            return StreamBlock.of(rows, sat, self.groups[part], self.votes[part], picks=part == "held")

        key = (id(module), id(heads.means), part, kind)
        if block is not None:
            self._cache["block"].pop(key, None)
        # every stream's blocks are kept: a map is read while the candidates are fitted and its
        # fusions only after them (~30 MB a stream at University-1652 size, ~15 streams)
        return self._remember("block", key, (module, heads.means), make, keep=64)

    def _output(self, heads: Heads, kind: str, module, part: str) -> torch.Tensor:
        view = "satellite" if part == "sat" else "drone"

        def stream_input() -> np.ndarray:
            centred = self._remember("centred", (id(heads.means), part), heads.means,
                                     lambda: heads.centred(self._desc(part), view), keep=3)
            return heads.input_from(centred, kind)

        x = self._remember("input", (id(heads.means), part, Heads.INPUT[kind]), heads.means, stream_input, keep=9)
        if kind == "centre":
            return heads.stream_output(kind, module, x, view)
        return self._remember("output", (id(module), id(heads.means), part, kind), (module, heads.means),
                              lambda: heads.stream_output(kind, module, x, view), keep=3 * self.keep)

    def _desc(self, part: str) -> dict:
        return self.views.sat if part == "sat" else {k: v[self.rows[part]] for k, v in self.views.drone.items()}

    def _remember(self, store: str, key, owner, make, keep: int):
        """An LRU entry; `owner` (the objects whose ids are in `key`) is kept alive with it, so
        that no id is reused while its entry lives."""
        cache = self._cache[store]
        if key in cache:
            cache.move_to_end(key)
            return cache[key][1]
        value = make()
        cache[key] = (owner, value)
        while len(cache) > keep:
            cache.popitem(last=False)
        return value


def stream_order(fitted: dict) -> list[str]:
    """`fitted`'s names with each fusion right after the candidate whose stream it starts with
    (stable otherwise): the order in which `Rows` computes every stream once."""
    first: dict = {}
    for heads in fitted.values():
        first.setdefault(id(heads.streams[0][1]), len(first))
    return sorted(fitted, key=lambda n: first[id(fitted[n].streams[0][1])])


@dataclass
class Reading:
    """What the criterion reads of one candidate's space, small enough to keep for every candidate
    (no embedding): each held-out image's pick among every satellite set (the space's satellites,
    then their turned copies); per half of the held-out images, (the voting flights, sorted, the
    rows scored, the voting flights' similarities with every set); the satellites the seen flights
    claim in every set (None unless asked for); under `Rows.joint`, per set and per half, the
    satellite of each voting flight in the joint assignment."""
    n_sat: int
    groups: np.ndarray
    picks: list
    halves: list
    own_claims: list | None = None
    joint_pairs: list | None = None

    def scores(self, claims: list | None = None) -> list[np.ndarray]:
        """Per held-out image 0/1 against every set; claims: one claimed set per satellite set
        (None: this space's own: its joint assignment under `Rows.joint`, else its own claims)."""
        if claims is None and self.joint_pairs is not None:
            return [self._agreement(k, pairs) for k, pairs in enumerate(self.joint_pairs)]
        claims = self.own_claims if claims is None else claims
        return [self._agreement(k, self._pairs_among_free(k, claimed)) for k, claimed in enumerate(claims)]

    def _pairs_among_free(self, k: int, claimed: np.ndarray) -> list[np.ndarray]:
        """Per half: each voting flight's satellite (-1: none) when the voting flights are
        assigned one-to-one to the satellites of set k that `claimed` leaves free."""
        free = np.setdiff1d(np.arange(self.n_sat), claimed)
        pairs = []
        for voters, _, sims in self.halves:
            match = cand.assign_similar(sims[k][:, free]) if len(free) else np.full(len(voters), -1)
            pairs.append(np.where(match >= 0, free[np.maximum(match, 0)], -1))
        return pairs

    def _agreement(self, k: int, pairs: list[np.ndarray]) -> np.ndarray:
        """1 where a scored image picks, in set k, the satellite its flight's voting half got."""
        pick, groups, correct = self.picks[k], self.groups, np.zeros(len(self.groups))
        for (voters, scored, _), flight_sat in zip(self.halves, pairs):
            at = np.minimum(np.searchsorted(voters, groups[scored]), len(voters) - 1)
            pseudo = np.where(voters[at] == groups[scored], flight_sat[at], -1)
            correct[scored] = (pick[scored] == pseudo) & (pseudo >= 0)
        return correct


def read(heads: Heads, rows: Rows, turns: list[Turns] = (), own_claims: bool = False) -> Reading:
    """The `Reading` of the space of `heads` (its satellites turned by each of `turns` too)."""
    return read_space(space_of(heads, rows), rows, turns, own_claims)


def read_space(space, rows: Rows, turns: list[Turns] = (), own_claims: bool = False) -> Reading:
    """`read` through a given reading of the space (spaces.py: its vectors, or a fusion's streams)."""
    sets = SatelliteSets(space.sat, turns, rows.turned)
    picks = [sim.argmax(1) for sim in space.similarities(sets, "held")]
    halves = [(voters, scored, space.flight_similarities(sets, "held", h))
              for h, (_, voters, scored) in enumerate(rows.halves)]
    reading = Reading(len(sets.sat), rows.groups["held"], picks, halves)
    if rows.joint:
        reading.joint_pairs = joint_pairs(halves, seen_similarities(space, sets))
    elif own_claims:
        reading.own_claims = claimed(space, rows, sets)
    space.share()
    return reading


def seen_similarities(space, sets: SatelliteSets) -> list[np.ndarray]:
    """The seen flights' mean embeddings' similarities with every satellite set of `sets`."""
    return space.flight_similarities(sets, "seen", 0)


def joint_pairs(halves: list, seen_sims: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Per satellite set, per half: the satellite of each voting held-out flight when the seen
    flights and the voting flights are assigned one-to-one to every satellite together. No side
    goes first: where the seen flights claimed first, a seen flight its space pairs poorly took
    the satellite of a held-out flight that sits on it, and that flight's images counted wrong
    for being right (random world 26, without the null: centring's criterion 0.478 claiming
    first, 0.733 joint, where its true held-out R@1 is 0.746)."""
    return [[cand.assign_similar(np.vstack([seen, sims[k]]))[len(seen):] for _, _, sims in halves]
            for k, seen in enumerate(seen_sims)]


def claimed(space, rows: Rows, sets: SatelliteSets) -> list[np.ndarray]:
    """For every satellite set of `sets` (in `space`, a reading of it): the satellites the seen
    flights claim when they are assigned one-to-one, but for `rows.unclaimable`
    (held_pairing=seen_on_seen: the held-out satellites). A seen flight's satellite is a seen
    one: the split holds out satellites with their flights, so a seen flight assigned to a
    held-out satellite is paired wrongly in this space, and its claim would only take that
    satellite from the held-out flight whose images may sit on it (random world 26: centring's
    seen flights claimed 9 of the 34 held-out satellites)."""
    claims = [cand.assign_similar(sim) for sim in seen_similarities(space, sets)]
    return [np.setdiff1d(c[c >= 0], rows.unclaimable) for c in claims]


def seen_claims(heads: Heads, views: cand.TrainViews, held: np.ndarray, per_flight: int = 8) -> np.ndarray:
    """The satellites the seen flights (a sample of their images) take in the space of `heads`."""
    rows = Rows(views, held, per_flight)
    space = space_of(heads, rows)
    return claimed(space, rows, SatelliteSets(space.sat))[0]


def adjusted(reading: Reading, claims: list | None = None) -> tuple[float, np.ndarray]:
    """-> (score, per held-out image): the criterion against the space's satellites, minus its
    mean against the turned copies when the reading has them (select.null_adjust)."""
    real, *nulls = reading.scores(claims)
    diff = real - np.mean(nulls, axis=0) if nulls else real
    return float(diff.mean()), diff


def criterion(heads: Heads, rows: Rows, claims=None):
    """-> (score, per held-out image 0/1): see the module docstring.

    The seen flights claim satellites (`claims`: satellite indices; None: assigned in this
    candidate's own space). Each held-out flight's images are split in two halves (alternate
    images); the held-out flights are assigned one-to-one to the unclaimed satellites from one
    half's means, and the other half's images, retrieving among *all* satellites, count as right
    when they pick their flight's satellite; then the halves swap. No image votes for its own
    pseudo-label, and agreeing with its own flight is not enough: a space where a flight-wide
    bias (weather, season) keeps a flight's images together but away from its satellite has them
    pick satellites the other flights claim."""
    return adjusted(read(heads, rows, (), claims is None), None if claims is None else [claims])


def null_adjusted(heads: Heads, rows: Rows, turns: list[Turns]):
    """criterion minus the same criterion against turned satellites (the mean over `turns`), per
    held-out image: what a space scores beyond the agreement its flights' own consistency buys (a
    space where each flight's images stay together scores by agreeing, aligned to the satellites
    or not)."""
    return adjusted(read(heads, rows, turns, True))


def _halves(groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each half h of the held-out images (alternate images; a flight of one image votes in
    half 0 and is scored in half 0): (the rows voting, those rows' flights' ids, sorted, the
    rows scored)."""
    half = _alternate(groups)
    flights, counts = np.unique(groups, return_counts=True)
    single = np.isin(groups, flights[counts < 2])
    out = []
    for h in (0, 1):
        vote = (half == h) | single
        out.append((vote, np.unique(groups[vote]), (half != h) | (single & (h == 0))))
    return out


def _alternate(groups: np.ndarray) -> np.ndarray:
    """0/1 alternating over each flight's images in row order."""
    order = np.argsort(groups, kind="stable")
    _, start, count = np.unique(groups[order], return_index=True, return_counts=True)
    rank = np.empty(len(groups), int)
    rank[order] = np.arange(len(groups)) - np.repeat(start, count)
    return rank % 2
