"""The cross-view simulator: SPEC §3 layout readable with plain zarr, determinism, no cross-view
label leak, raw < centred < oracle at the defaults, and the fingerprint guard."""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import zarr

from geoalign_store.sim import GROUP_BASE, PRIOR, SIZES, generate, realise, simulate
from geoalign_store.store import StoreError

SMALL = {"dim": 64, "train_locs": 12, "test_locs": 10, "views": 3, "distractors": 4}
VIEWS = [(s, v) for s in ("train", "test") for v in ("drone", "satellite")]


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """Two OpenBLAS threads on 2 cores shared with other processes spin at every barrier (the
    default simulation takes 30 s instead of 2 s); one thread keeps these tests fast. Numpy's
    bundled OpenBLAS is found among the loaded libraries; where it is not, this does nothing."""
    maps = Path("/proc/self/maps")
    paths = sorted({line.split()[-1] for line in maps.read_text().splitlines()
                    if "openblas" in line.lower()}) if maps.exists() else []
    restore = []
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_{}_num_threads64_", "openblas_{}_num_threads"):
            get, set_ = (getattr(lib, name.format(op), None) for op in ("get", "set"))
            if get is not None and set_ is not None:
                restore.append((set_, get()))
                set_(1)
    yield
    for set_, before in restore:
        set_(before)


@pytest.fixture(scope="module")
def default_store(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("sim") / "store.zarr")
    return url, simulate(url)


def _view(url, split, view, dataset="sim"):
    return zarr.open_group(url, mode="r")[f"features/{dataset}/{split}/{view}"]


def test_layout_readable_with_plain_zarr(default_store):
    url, summary = default_store
    sizes = {("train", "satellite"): 200, ("train", "drone"): 1600,
             ("test", "satellite"): 250, ("test", "drone"): 1600}
    for split, view in VIEWS:
        g, n = _view(url, split, view), sizes[split, view]
        assert g.attrs["complete"] and summary["store_views"][f"{split}/{view}"]["complete"]
        ids = [str(i) for i in g["ids"][:]]
        assert len(ids) == len(set(ids)) == n and all(i.startswith(f"{split}/{view}/") for i in ids)
        assert g["labels"].dtype == np.int64 and g["labels"].shape == (n,)
        for flag in ("in_query", "in_gallery"):
            assert g[flag].dtype == bool and g[flag].shape == (n,)
        for layer in (26, 28):
            for kind in ("desc", "cls"):
                x = g[f"layer_{layer}/{kind}"][:]
                assert x.dtype == np.float32 and x.shape == (n, 240)
                np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sat = _view(url, "test", "satellite")
    assert sat["in_query"][:].sum() == 200 and sat["in_gallery"][:].all()   # 50 distractors
    drone_labels = set(_view(url, "test", "drone")["labels"][:].tolist())
    distractors = sat["labels"][:][~sat["in_query"][:]]
    assert not drone_labels & set(distractors.tolist())
    assert drone_labels == set(sat["labels"][:][sat["in_query"][:]].tolist())
    fp = zarr.open_group(url, mode="r")["features/sim"].attrs["fingerprint"]
    assert fp["spec"]["backbone"] == "simulator" and fp["spec"]["seed"] == 0


def test_train_drone_groups_match_no_satellite(default_store):
    url, _ = default_store
    sat = _view(url, "train", "satellite")["labels"][:]
    drone = _view(url, "train", "drone")["labels"][:]
    assert not set(drone.tolist()) & set(sat.tolist())
    assert (drone >= GROUP_BASE).all() and len(np.unique(drone)) == len(sat)
    assert (np.diff(drone) >= 0).all() and (np.bincount(drone - GROUP_BASE) == 8).all()
    sat_ids = {str(i).split("/")[2] for i in _view(url, "train", "satellite")["ids"][:]}
    drone_ids = {str(i).split("/")[2] for i in _view(url, "train", "drone")["ids"][:]}
    assert not sat_ids & drone_ids


def test_raw_below_centred_below_oracle_at_defaults(default_store):
    r1 = default_store[1]["d2s_r1"]
    assert 0.02 < r1["raw"] < r1["centred"] < r1["oracle"]
    assert r1["oracle"] > 0.8 and r1["oracle"] - r1["centred"] > 0.3


def test_deterministic_under_seed(tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    sa, sb = simulate(str(a), seed=3, **SMALL), simulate(str(b), seed=3, **SMALL)
    assert sa["d2s_r1"] == sb["d2s_r1"]
    for split, view in VIEWS:
        ga, gb = _view(str(a), split, view), _view(str(b), split, view)
        for name in ("ids", "labels", "in_query", "layer_26/desc", "layer_28/desc", "layer_28/cls"):
            np.testing.assert_array_equal(ga[name][:], gb[name][:])
    other, _ = generate(seed=4, **SMALL)
    assert not np.array_equal(other["train", "drone"]["layer_28/desc"],
                              _view(str(a), "train", "drone")["layer_28/desc"][:])


def test_resimulate_other_parameters_refused_unless_overwrite(tmp_path):
    url = str(tmp_path / "s.zarr")
    first = simulate(url, seed=1, **SMALL)
    assert simulate(url, seed=1, **SMALL)["d2s_r1"] == first["d2s_r1"]   # same spec: a no-op
    with pytest.raises(StoreError, match="seed"):
        simulate(url, seed=2, **SMALL)
    with pytest.raises(StoreError, match="drone_noise"):
        simulate(url, seed=1, drone_noise=0.1, **SMALL)
    before = _view(url, "test", "drone")["layer_28/desc"][:]
    simulate(url, seed=2, overwrite=True, **SMALL)
    assert not np.array_equal(before, _view(url, "test", "drone")["layer_28/desc"][:])
    simulate(url, seed=2, dataset="other", **SMALL)   # another dataset name is its own group
    with pytest.raises(ValueError, match="unknown simulator parameter"):
        simulate(url, seed=2, noise=0.3, **SMALL)


def test_default_recipe_meets_the_target_on_the_simulator(default_store):
    """Regression guard of the method: the default (label-free) recipe, fitted on the default
    simulation, closes >= 70% of the raw -> oracle D2S R@1 gap and beats domain centring by
    >= 10 points (the issue's target), scored by the product's own metrics."""
    from geoalign_store.config import compose
    from pipelines import fit_heads, score
    url, summary = default_store
    fit_heads.run(compose("fit-heads", [f"store={url}", "agra.epochs=150"]))
    heads = score.run(compose("score", [f"store={url}", "mode=D2S", "pictures=0"]))["recall"]["1"]
    r1 = summary["d2s_r1"]
    assert (heads - r1["raw"]) / (r1["oracle"] - r1["raw"]) >= 0.7
    assert heads - r1["centred"] >= 0.10


@pytest.mark.parametrize("family", ["regimes", "flightshift", "neighbours", "outliers", "scenes", "altitude"])
def test_every_family_writes_the_same_layout_deterministically(tmp_path, family):
    """Each family: the SPEC layout, unit-norm float32 rows, train groups that match no
    satellite, the same store for the same seed, and its regimes recorded in the ground truth."""
    small = {"dim": 80, "train_locs": 30, "test_locs": 20, "views": 4, "distractors": 5}
    url = str(tmp_path / "f.zarr")
    summary = simulate(url, family=family, seed=5, **small)
    assert summary["family"] == family and summary["params"]["dim"] == 80
    for split, view in VIEWS:
        g = _view(url, split, view)
        n = {"satellite": 30 if split == "train" else 25, "drone": (30 if split == "train" else 20) * 4}[view]
        x = g["layer_28/desc"][:]
        assert x.shape == (n, 80) and x.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    drone = _view(url, "train", "drone")["labels"][:]
    assert not set(drone.tolist()) & set(_view(url, "train", "satellite")["labels"][:].tolist())
    again, truth = generate(family=family, seed=5, **small)
    np.testing.assert_array_equal(again["test", "drone"]["layer_26/desc"],
                                  _view(url, "test", "drone")["layer_26/desc"][:])
    assert len(truth["test_drone_expert"]) == 80
    zarr_spec = zarr.open_group(url, mode="r")["features/sim"].attrs["fingerprint"]["spec"]
    assert zarr_spec["family"] == family


def test_unknown_family_or_knob_is_refused_with_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match="manifold, regimes"):
        simulate(str(tmp_path / "x.zarr"), family="rotations")
    with pytest.raises(ValueError, match="rotated_frac"):
        simulate(str(tmp_path / "x.zarr"), family="regimes", expert_mix=0.3)


@pytest.mark.parametrize("family", ["regimes", "flightshift", "neighbours", "outliers", "scenes", "altitude"])
def test_family_defaults_are_hard_for_raw_and_easy_for_the_oracle(family):
    """The frozen defaults (smaller test split and, for the widest family, fewer views for speed):
    raw descriptors score poorly, a supervised map scores high."""
    faster = {"flightshift": {"views": 10, "test_locs": 100}}.get(family, {})
    data, truth = generate(family=family, seed=0, **faster)
    from geoalign_store.sim import baselines
    r1 = baselines(data, truth)
    assert r1["raw"] < 0.4 and r1["centred"] < 0.6
    assert max(r1["oracle"], r1.get("oracle_regime", 0)) > 0.9


def test_random_family_draws_a_world_per_seed_within_its_prior(tmp_path):
    """family=random: each seed its own sizes and structure, inside the prior's bounds (C a
    multiple of 40 for AGRA, train flights per dimension 0.1-10, drone rows bounded), the same
    world for the same seed, a size the user gives kept, and a store written like any family's."""
    drawn = [realise(seed, {n: PRIOR[n] for n in SIZES}, PRIOR) for seed in range(40)]
    dims = {s["dim"] for s, _ in drawn}
    assert len(dims) > 5 and all(d % 40 == 0 and 40 <= d <= PRIOR["dim_max"] for d in dims)
    assert all(PRIOR["train_locs_min"] <= s["train_locs"] <= PRIOR["train_locs_max"] for s, _ in drawn)
    assert all(s["train_locs"] * s["views"] <= max(PRIOR["drone_rows_max"], 2 * s["train_locs"])
               for s, _ in drawn)
    per_dim = [s["train_locs"] / s["dim"] for s, _ in drawn]
    assert min(per_dim) < 0.5 and max(per_dim) > 3        # where maps can and cannot be fitted
    assert {w["distortion"] for _, w in drawn} == {0, 1, 2} and {w["nonlinear"] for _, w in drawn} == {0, 1}
    assert realise(7, {n: PRIOR[n] for n in SIZES}, PRIOR) == drawn[7]
    small = {"dim": 80, "train_locs": 30, "test_locs": 20, "views": 4, "distractors": 5}
    summary = simulate(str(tmp_path / "r.zarr"), family="random", seed=3, **small)
    assert summary["world"]["dim"] == 80 and summary["world"]["views"] == 4
    x = _view(str(tmp_path / "r.zarr"), "test", "drone")["layer_28/desc"][:]
    assert x.shape == (80, 80)
    again, _ = generate(family="random", seed=3, **small)
    np.testing.assert_array_equal(again["test", "drone"]["layer_28/desc"], x)


def test_random_worlds_test_region_differs_from_the_train_region():
    """The test split's locations come from another region: its satellites' mean content is
    further from the train satellites' than two draws of one region would be."""
    from geoalign_store.sim import RandomWorld
    sizes, world = realise(4, {n: PRIOR[n] for n in SIZES}, PRIOR)
    world = {**world, "test_shift": 1.0}
    model = RandomWorld(np.random.default_rng(0), sizes["dim"], world)
    rng = np.random.default_rng(1)
    mean = lambda split: model.clean(model.latents(rng, 2000, split))[28].mean(0)  # noqa: E731
    a, b, test = mean("train"), mean("train"), mean("test")
    assert np.linalg.norm(test - a) > 3 * np.linalg.norm(b - a)
