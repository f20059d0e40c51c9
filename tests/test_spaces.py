"""A fusion's reading through its streams (method/spaces.py) against the reading of its vectors:
the same picks, pairings and criterion, flight similarities equal to rounding; each stream read
once for every fusion that shares it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from geoalign_store.method import Rows, SatelliteSets, Turns, adjusted, holdouts, read, select, stream_order
from geoalign_store.method import spaces
from geoalign_store.method.criterion import read_space
from geoalign_store.sim import generate
from test_selection import FAST, views_of

CFG = replace(FAST, fusion_weights=(0.25, 0.5), best_of_maps=True)


@pytest.fixture(scope="module")
def fitted():
    data = generate(family="manifold", seed=1, dim=48, train_locs=40, test_locs=4, views=5, distractors=0)[0]
    views = views_of(data)
    split, _ = holdouts(views, CFG, 0)
    return views, split, select(views, CFG, seed=0, log=lambda *_: None).fitted


def _fusions(candidates: dict) -> list[str]:
    return [n for n, h in candidates.items() if len(h.streams) == 2 and h.vectors("drone") == 1]


@pytest.mark.parametrize("pairing,null_of", [("seen_first", "all"), ("joint", "held"), ("seen_on_seen", "all")])
def test_a_fusion_read_through_its_streams_reads_as_its_vectors(fitted, pairing, null_of):
    """Every one-vector fusion, with the null's turned satellites, under each estimate."""
    views, split, candidates = fitted
    rows = Rows(views, split).estimated_by(pairing, null_of)
    turns = [Turns(0, i) for i in range(4)]
    names = _fusions(candidates)
    assert len(names) >= 8
    for name in names:
        plain = read_space(spaces.Vectors(candidates[name], rows), rows, turns, own_claims=True)
        fused = read_space(spaces.Fusion(candidates[name], rows), rows, turns, own_claims=True)
        for a, b in zip(plain.picks, fused.picks):
            np.testing.assert_array_equal(a, b, err_msg=name)
        for (voters_a, scored_a, sims_a), (voters_b, scored_b, sims_b) in zip(plain.halves, fused.halves):
            np.testing.assert_array_equal(voters_a, voters_b)
            np.testing.assert_array_equal(scored_a, scored_b)
            for a, b in zip(sims_a, sims_b):
                np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
        for a, b in zip(plain.own_claims or [], fused.own_claims or []):
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert adjusted(plain)[0] == adjusted(fused)[0], name


def test_each_stream_is_read_once_for_the_fusions_that_share_it(fitted, monkeypatch):
    """Fusions read alone make one block per stream and part, however many fusions hold the
    stream; read in the selection's order, every stream's block comes from the reading of its
    own candidate and none is made again. A K-vector fusion is read through its vectors."""
    views, split, candidates = fitted
    made = []
    real = spaces.StreamBlock.of
    monkeypatch.setattr(spaces.StreamBlock, "of", lambda *a, **k: made.append(len(a[0])) or real(*a, **k))
    rows = Rows(views, split)
    kinds = {name: type(spaces.space_of(candidates[name], rows)).__name__ for name in candidates}
    assert {kinds[n] for n in candidates if n not in _fusions(candidates)} == {"Vectors"}
    assert {kinds[n] for n in _fusions(candidates)} == {"Fusion"}
    assert any(" + " in n and "best of maps" in n for n in candidates)   # fusions of K vectors: Vectors
    for name in _fusions(candidates):
        read(candidates[name], rows, own_claims=True)
    streams = {id(module) for n in _fusions(candidates) for _, module in candidates[n].streams}
    assert len(made) == 2 * len(streams) and len(_fusions(candidates)) > len(streams)   # held and seen
    made.clear()
    rows = Rows(views, split)
    for name in stream_order(candidates):
        read(candidates[name], rows, own_claims=True)
    assert made == []


def test_a_block_a_reading_shares_is_the_block_made_from_the_stream(fitted):
    """What a one-stream space's reading gives the fusions after it (Vectors.share) is, bit for
    bit, the block made from the stream's outputs."""
    views, split, candidates = fitted
    rows = Rows(views, split)
    heads = candidates["ridge(1)"]
    read(heads, rows, [Turns(1, 0)], own_claims=True)
    for part in ("held", "seen"):
        shared = rows.stream_block(heads, 0, part)
        made = Rows(views, split).stream_block(heads, 0, part)
        for a, b in zip([shared.sims, *shared.flight, *shared.sq_norms], [made.sims, *made.flight, *made.sq_norms]):
            np.testing.assert_array_equal(a, b, err_msg=part)


@pytest.mark.parametrize("only", [None, np.array([1, 4, 5, 11, 17])])
def test_turns_from_similarities_alone_equal_those_from_the_rows(only):
    """SatelliteSets.with_turns(s): the rows' products with the turned satellites' mean taken
    from s, not from the rows (the same number to rounding)."""
    rng = np.random.default_rng(6)
    sat = (rng.standard_normal((24, 30)) + 0.5).astype(np.float32)
    sets = SatelliteSets(sat, [Turns(3, i) for i in range(3)], only)
    for y in (rng.standard_normal((12, 30)).astype(np.float32), rng.standard_normal((4, 30))):
        for a, b in zip(sets.similarities(y), sets.with_turns(y @ sat.T)):
            np.testing.assert_allclose(a, b, atol=1e-5)
