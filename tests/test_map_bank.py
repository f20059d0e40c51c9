"""The best-of-maps rule (issue 24): a bank of K maps with no gate embeds a drone image as K
vectors, one a map; the criterion's similarities and flight means take the best of them; saved
and loaded heads keep the rule, and banks saved before it keep their gate."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from geoalign_store.method import Heads, MapBank, SatelliteSets, Turns, flight_means
from geoalign_store.store import save_tensors


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def bank(rng, dim=12, rank=5, k=3, best_of=True):
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].astype(np.float32)
    maps = (np.eye(rank) + 0.5 * rng.standard_normal((k, rank, rank))).astype(np.float32)
    if best_of:
        return MapBank.build(basis, maps, best_of=True), basis, maps
    gate = rng.standard_normal((k, rank)).astype(np.float32), np.zeros(k, np.float32)
    return MapBank.build(basis, maps, *gate), basis, maps


# rank 3 of 12: the maps' three factors; 12 (the whole descriptor) and 6: one dense D x D matrix each
RANKS = pytest.mark.parametrize("rank", [3, 6, 12])


@RANKS
def test_each_of_the_k_vectors_is_one_map_applied_with_the_identity_elsewhere(rank):
    rng = np.random.default_rng(0)
    mb, basis, maps = bank(rng, rank=rank)
    x = unit(rng.standard_normal((7, 12)).astype(np.float32))
    out = mb.embed(torch.from_numpy(x), "drone").numpy()
    assert out.shape == (7, 3, 12) and mb.vectors == 3
    for k in range(3):
        c = x @ basis
        want = unit(x + (c @ maps[k] - c) @ basis.T)
        np.testing.assert_allclose(out[:, k], want, atol=1e-5)
    np.testing.assert_allclose(mb.embed(torch.from_numpy(x), "satellite").numpy(), x, atol=1e-6)


@RANKS
@pytest.mark.parametrize("gate", ["linear", "subspace"])
def test_a_gated_bank_picks_one_of_those_vectors_per_image(rank, gate):
    rng = np.random.default_rng(1)
    gated, basis, maps = bank(rng, rank=rank, best_of=False)
    if gate == "subspace":
        axes = np.linalg.qr(rng.standard_normal((rank, 2)))[0].astype(np.float32)
        gated = MapBank.build(basis, maps, gated.gate_weight.numpy(), gated.gate_bias.numpy(), axes)
    every = MapBank.build(basis, maps, best_of=True)
    x = torch.from_numpy(unit(rng.standard_normal((40, 12)).astype(np.float32)))
    picked = gated.choose(x @ gated.basis).numpy()
    assert len(np.unique(picked)) > 1
    np.testing.assert_allclose(gated.embed(x, "drone").numpy(), every.embed(x, "drone").numpy()[np.arange(40), picked],
                               atol=1e-5)
    assert gated.vectors == 1


def test_a_whole_descriptor_bank_follows_its_maps_when_they_are_loaded_again():
    """The dense D x D matrices are made from the buffers on first use: a bank whose maps are
    loaded after it embedded must embed with the new maps, and pickling carries no copy."""
    rng = np.random.default_rng(3)
    mb, basis, _ = bank(rng, rank=12)
    other, _, new_maps = bank(rng, rank=12)
    x = torch.from_numpy(unit(rng.standard_normal((5, 12)).astype(np.float32)))
    mb.embed(x, "drone")
    mb.load_state_dict(other.state_dict())
    c = x.numpy() @ other.basis.numpy()
    want = unit(np.einsum("nr,krs->nks", c, new_maps) @ other.basis.numpy().T)
    np.testing.assert_allclose(mb.embed(x, "drone").numpy(), want, atol=1e-5)
    assert "_dense" not in pickle.loads(pickle.dumps(mb)).__dict__


def test_heads_keep_the_rule_when_saved_and_banks_saved_before_it_keep_their_gate(tmp_path):
    rng = np.random.default_rng(2)
    mb, basis, maps = bank(rng)
    heads = Heads((26, 28), {}, [("maps", mb)], [1.0], name="orth(3, best of maps)")
    heads.save(tmp_path)
    again = Heads.load(tmp_path, heads.recipe())
    desc = {k: unit(rng.standard_normal((4, 6)).astype(np.float32)) for k in (26, 28)}
    assert again.vectors("drone") == 3 and again.vectors("satellite") == 1
    np.testing.assert_array_equal(again.embed(desc, "drone"), heads.embed(desc, "drone"))
    gated, *_ = bank(rng, best_of=False)
    old = {k: v for k, v in gated.state_dict().items()}       # what a bank saved before the rule holds
    save_tensors(tmp_path / "maps.safetensors", old)
    assert Heads.load(tmp_path, heads.recipe()).vectors("drone") == 1


def test_a_fused_best_of_heads_scores_a_pair_as_w_best_map_plus_the_other_stream():
    rng = np.random.default_rng(3)
    mb, *_ = bank(rng)
    fused = Heads((26, 28), {}, [("maps", mb), ("centre", None)], [0.25, 0.75])
    desc = {k: unit(rng.standard_normal((5, 6)).astype(np.float32)) for k in (26, 28)}
    sat = {k: unit(rng.standard_normal((4, 6)).astype(np.float32)) for k in (26, 28)}
    maps_only, centre_only = fused.with_streams(fused.streams[:1], [1.0]), fused.with_streams(fused.streams[1:], [1.0])
    got = np.einsum("nkd,md->nkm", fused.embed(desc, "drone"), fused.embed(sat, "satellite")).max(1)
    best = np.einsum("nkd,md->nkm", maps_only.embed(desc, "drone"), maps_only.embed(sat, "satellite")).max(1)
    want = 0.25 * best + 0.75 * centre_only.embed(desc, "drone") @ centre_only.embed(sat, "satellite").T
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("turns", [0, 2])
def test_the_criterions_similarities_take_the_best_vector_against_every_satellite_set(turns):
    rng = np.random.default_rng(4)
    sat = unit(rng.standard_normal((10, 12)).astype(np.float32))
    drone = unit(rng.standard_normal((6, 3, 12)).astype(np.float32))
    sets = SatelliteSets(sat, [Turns(0, i) for i in range(turns)])
    for got, per_map in zip(sets.similarities(drone), zip(*[sets.similarities(drone[:, k]) for k in range(3)])):
        np.testing.assert_allclose(got, np.max(per_map, axis=0), atol=1e-6)


def test_flight_means_of_several_vectors_are_each_maps_mean():
    rng = np.random.default_rng(5)
    drone = unit(rng.standard_normal((8, 2, 6)).astype(np.float32))
    groups = np.array([3, 1, 3, 1, 1, 7, 7, 3])
    means, inverse = flight_means(drone, groups)
    assert means.shape == (3, 2, 6)
    for k in range(2):
        np.testing.assert_allclose(means[:, k], flight_means(drone[:, k], groups)[0], atol=1e-12)
