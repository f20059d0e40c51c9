"""The criterion's fast paths against their plain definitions: the shared embedding cache
(`Rows`) against `Heads.embed`, and turned satellites' similarities against building the turned
copies (`Turns`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from geoalign_store.method import Rows, SatelliteSets, TrainViews, Turns, holdout_mask, select, stream_order
from geoalign_store.sim import generate
from test_selection import FAST, views_of


@pytest.fixture(scope="module")
def fitted():
    data = generate(family="manifold", seed=1, dim=48, train_locs=40, test_locs=4, views=4, distractors=0)[0]
    views = views_of(data)
    sel = select(views, replace(FAST, fusion_weights=(0.25, 0.5)), seed=0, log=lambda *_: None)
    return views, sel.fitted


@pytest.mark.parametrize("keep", [1, 4])
def test_rows_embed_every_candidate_bitwise_as_heads_do(fitted, keep):
    """Every candidate (fusions too), every part, in the order the selection measures them, with
    a cache that keeps one stream output per part or several: bitwise what Heads.embed gives."""
    views, candidates = fitted
    held = holdout_mask(views.groups, 0.25, 3)
    rows = Rows(views, held, per_flight=2, keep=keep)
    parts = {"sat": (views.sat, "satellite")}
    for part in ("held", "seen"):
        parts[part] = ({k: v[rows.rows[part]] for k, v in views.drone.items()}, "drone")
    assert len(rows.rows["seen"]) == 2 * len(np.unique(views.groups[~held]))
    for name in stream_order(candidates):
        for part, (desc, view) in parts.items():
            np.testing.assert_array_equal(rows.embed(candidates[name], part), candidates[name].embed(desc, view),
                                          err_msg=f"{name} / {part}")


def test_held_per_flight_reads_evenly_spaced_images_of_every_held_out_flight():
    """select.held_per_flight=k: each held-out flight keeps min(k, its images), spread over its
    images in row order; no flight is dropped; 0 reads every image."""
    groups = np.repeat(np.arange(6), [1, 2, 3, 9, 12, 4])
    views = TrainViews({26: np.zeros((6, 2))}, {}, groups, (26,))
    held = np.isin(groups, [0, 3, 4])
    every = Rows(views, held).rows["held"]
    capped = Rows(views, held, held_per_flight=3)
    assert every.tolist() == np.flatnonzero(held).tolist()
    assert sorted(np.unique(groups[capped.rows["held"]])) == [0, 3, 4]
    assert np.bincount(capped.groups["held"], minlength=6)[[0, 3, 4]].tolist() == [1, 3, 3]
    assert groups[capped.rows["held"]].tolist() == capped.groups["held"].tolist()
    start = np.flatnonzero(groups == 3)[0]
    assert (capped.rows["held"][capped.groups["held"] == 3] - start).tolist() == [0, 3, 6]


def test_stream_order_puts_each_fusion_after_the_stream_it_starts_with(fitted):
    _, candidates = fitted
    order = stream_order(candidates)
    assert sorted(order) == sorted(candidates) and order[0] == "centre"
    base_of = lambda n: n.split(" ", 1)[1].rsplit(" + ", 1)[0]  # noqa: E731  ("w base + (1-w) teacher")
    fusions = [n for n in candidates if " + " in n]
    assert fusions
    for name in fusions:
        base = base_of(name)
        assert order.index(base) < order.index(name)
        between = order[order.index(base) + 1:order.index(name)]
        assert all(" + " in n and base_of(n) == base for n in between), (name, between)


@pytest.mark.parametrize("n,dim", [(60, 200), (60, 12)])
def test_turned_similarities_equal_those_of_the_turned_copies(n, dim):
    """More dimensions than satellites and fewer; float32 drones and float64 flight means."""
    rng = np.random.default_rng(4)
    sat = (rng.standard_normal((n, dim)) + 0.5).astype(np.float32)
    turns = [Turns(9, i) for i in range(3)]
    sets = SatelliteSets(sat, turns)
    assert len(sets) == 4
    for y in (rng.standard_normal((30, dim)).astype(np.float32), rng.standard_normal((5, dim))):
        got = sets.similarities(y)
        np.testing.assert_array_equal(got[0], y @ sat.T)
        for sim, turn in zip(got[1:], turns):
            np.testing.assert_allclose(sim, y @ turn(sat).T, atol=2e-4 * np.abs(y @ sat.T).max())
    assert len(SatelliteSets(sat).similarities(sat)) == 1


def test_a_null_of_some_satellites_turns_those_alone_as_a_set_of_their_own():
    """Rows(null_of="held"): the held-out satellites turned along their own axes, the seen ones
    left real; equal to the similarities with that explicitly assembled set."""
    rng = np.random.default_rng(5)
    sat = (rng.standard_normal((40, 30)) + 0.5).astype(np.float32)
    only = np.array([3, 7, 8, 20, 21, 33, 39])
    turns = [Turns(2, i) for i in range(2)]
    y = rng.standard_normal((9, 30)).astype(np.float32)
    got = SatelliteSets(sat, turns, only).similarities(y)
    np.testing.assert_array_equal(got[0], y @ sat.T)
    for sim, turn in zip(got[1:], turns):
        assembled = sat.copy()
        assembled[only] = turn(sat[only])
        np.testing.assert_allclose(sim, y @ assembled.T, atol=2e-4 * np.abs(y @ sat.T).max())
        rest = np.setdiff1d(np.arange(len(sat)), only)
        np.testing.assert_array_equal(sim[:, rest], (y @ sat.T)[:, rest])
        assert np.abs(sim[:, only] - (y @ sat.T)[:, only]).max() > 0.1


@pytest.mark.parametrize("pairing,null_of", [("joint", "held"), ("seen_on_seen", "all"), ("seen_first", "all")])
def test_rows_under_another_estimate_read_as_rows_built_for_it(fitted, pairing, null_of):
    """Rows.estimated_by (select.second_opinion: one embedding cache for both estimates): every
    candidate's criterion, after the first estimate has filled the cache, bitwise what Rows built
    for that estimate alone gives; the first estimate's rows keep their own."""
    from geoalign_store.method import adjusted, read, region_folds
    views, candidates = fitted
    split = region_folds(views, 0.25, 0, seed=2)[0]
    turns = [Turns(0, i) for i in range(2)]
    first = Rows(views, split)
    before = {n: adjusted(read(h, first, turns, own_claims=True))[0] for n, h in candidates.items()}
    other, fresh = first.estimated_by(pairing, null_of), Rows(views, split, pairing=pairing, null_of=null_of)
    for name, heads in candidates.items():
        got, want = adjusted(read(heads, other, turns, True)), adjusted(read(heads, fresh, turns, True))
        assert got[0] == want[0] and np.array_equal(got[1], want[1]), name
        assert adjusted(read(heads, first, turns, True))[0] == before[name]
    assert first.joint is False and other.joint is (pairing == "joint")
