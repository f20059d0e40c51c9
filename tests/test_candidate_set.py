"""The candidate set of a selection: each kind's map rank, chosen among one map at each rank
(select.other_map_ranks; method/candidate_set.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from geoalign_store.config import ConfigError
from geoalign_store.method import select
from geoalign_store.method import candidate_set, selection
from geoalign_store.sim import generate

from test_selection import FAST, views_of

# maps on 16 leading directions by default, or on the whole 160-wide descriptor (4096 is capped)
RANKS = replace(FAST, map_rank=16, other_map_ranks=(4096,), rounds=1)


@pytest.fixture(scope="module")
def sim():
    return generate(family="manifold", seed=3, dim=80, train_locs=80, test_locs=60, views=4, distractors=10)[0]


def rank_of(heads) -> int:
    bank = dict(heads.streams)["maps"]
    return bank.basis.shape[1]


def test_ranks_are_capped_at_the_descriptor_and_the_default_rank_comes_first():
    cfg = replace(FAST, map_rank=512, other_map_ranks=(4096, 16, 512))
    assert candidate_set.map_ranks(cfg, 160) == [160, 16]
    assert candidate_set.map_ranks(cfg, 1024) == [512, 16, 1024]
    assert candidate_set.map_ranks(replace(FAST, map_rank=512, other_map_ranks=()), 160) == [160]
    with pytest.raises(ConfigError, match="other_map_ranks"):
        replace(FAST, other_map_ranks=(0,))


@pytest.mark.parametrize("favoured", [16, 160])
def test_a_kind_takes_the_rank_its_probes_choose_and_refits_it_by_name(sim, favoured):
    """The rank `choose` takes among one map at each rank is the rank of that kind's every map;
    no map of the other rank stays; a map at the other rank names its rank, and a refit by that
    name fits it at that rank again (fused too)."""
    views = views_of(sim)
    asked = []

    def choose(probes: dict) -> str:
        asked.append(sorted(rank_of(h) for h in probes.values()))
        return next(n for n, h in probes.items() if rank_of(h) == favoured)

    fitted, chain = candidate_set.candidates(views, RANKS, 0, None, lambda h: 0.5, lambda *_: None, choose=choose)
    assert asked == [[16, 160], [16, 160]]                  # one choice per kind (one round)
    maps = {n: h for n, h in fitted.items() if n.startswith(("ridge", "orth"))}
    at = None if favoured == 16 else 160
    expected = {candidate_set.map_names(kind, k, at, "", False)[gate]
                for kind in ("ridge", "orth") for k, gates in ((1, ["lda"]), (2, ["lda", "subspace"])) for gate in gates}
    assert set(maps) == expected
    assert {rank_of(h) for h in maps.values()} == {favoured}
    assert all(("rank 160" in n) == (favoured == 160) for n in maps)
    name = next(n for n in maps if n.startswith("ridge(2"))
    fused = f"0.5 {name} + 0.5 {chain[0]}"
    for wanted in (name, fused):
        refit = selection._refit(wanted, fitted[wanted], views, RANKS, 0, chain)
        assert rank_of(refit) == favoured
        bank, again = dict(refit.streams)["maps"], dict(fitted[wanted].streams)["maps"]
        assert np.allclose(bank.maps.numpy(), again.maps.numpy(), atol=1e-5)   # the same fit, same flights


def test_the_selection_keeps_the_smaller_rank_within_one_standard_error(sim):
    """select's rule for the rank: the whole-descriptor map must beat the smaller one by more
    than one standard error of their paired difference; the log names the choice."""
    views, lines = views_of(sim), []
    chosen = select(views, RANKS, 0, log=lines.append)
    said = [line for line in lines if " maps: rank " in line]
    assert len(said) == 2 and all(" among " in line for line in said)
    results = {"small": (0.50, np.r_[np.ones(50), np.zeros(50)]), "whole": (0.51, np.r_[np.ones(51), np.zeros(49)])}
    groups = np.repeat(np.arange(25), 4)
    margins = selection.spread(results, groups, {"small": 256, "whole": 25600})
    assert selection._smallest_near_best(results, margins) == "small"
    results["whole"] = (0.9, np.r_[np.ones(90), np.zeros(10)])
    margins = selection.spread(results, groups, {"small": 256, "whole": 25600})
    assert selection._smallest_near_best(results, margins) == "whole"
    assert chosen.chosen in chosen.estimates
