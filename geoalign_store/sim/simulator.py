"""A family of feature-level cross-view simulators: stores with known ground truth (SPEC §6).

`family=` picks the generative model (sim/families.py: manifold, regimes,
flightshift, neighbours, outliers, scenes, altitude), each with its own default sizes and knobs; the rest
of this module is shared. The `manifold` family (the default, and the original simulator) is
described here:

It writes `features/<dataset>/{train,test}/{drone,satellite}` in the SPEC §3 layout (through
the store wing, the only code that knows the layout) with layers 26 and 28, so fit-heads, index and
score run on it unchanged. The generative model, per layer k in {26, 28} (C = `dim` channels of
which `redundant_frac` are redundant):

- location latent z ~ N(0, I_latent_dim); its clean embedding e_28(z) = B tanh(embed_gain A z)
  (a random non-linear embedding onto a low-dimensional manifold), unit norm on average;
  e_26(z) = layer26_mix e_28(z) + sqrt(1 - layer26_mix^2) e'(z) with a second embedding e';
- satellite: L2(R(e_k(z) + m_sat + sat_noise n)), one image per location;
- drone, `views` images per location, each with a random distortion ("expert") j of `experts`:
  u = (1 - expert_mix) e_k(z) + expert_mix Q_jk e_k(z)   (Q_jk random orthogonal: rotation-like)
  y = tanh(expert_gain u) / expert_gain + o_jk           (elementwise non-linearity + offset)
  L2(R(y + m_drone + sum_i c_i v_i + drone_noise n)) with a global domain offset m_drone, nuisance
  directions v_i shared by all drones (coefficients c_i ~ N(0, nuisance_std^2) per image, the same
  for both layers) that carry no location information, and per-image noise;
- R appends redundant channels: random linear mixtures of the free channels (the same R for both
  views of a layer);
- `layer_k/cls` is another noisy copy of the descriptor: L2(desc + cls_noise n) (no simulated
  CLS token exists; it is there so the layout is complete).
Norms of m_sat, m_drone, o_jk and the noise vectors are given relative to the clean embedding's.

Train: satellite labels 0..train_locs-1; drone labels are group ids 100000 + a permutation, rows in
group-id order, ids `train/drone/g<group>/<j>`: nothing in the store links a drone group to its
satellite. Test: real location ids in both views (train_locs.. for the test locations, then the
`distractors`: satellites with no drones, `in_query` false for S2D). Deterministic under `seed`;
the model, train and test draws use independent streams.

`simulate` returns D2S R@1 on the test split (all drones vs all satellites, distractors included)
for: raw (`heads=none`: each layer's desc, concatenated, L2), domain-centred (each layer minus its
view's test mean, L2, then as raw) and a supervised oracle (ridge map drone -> satellite fitted on
the true train pairs, lambda chosen on held-out train locations). At fixed knobs the task gets
easier as `dim` grows: the manifold's intrinsic dimension is fixed while the distortions and noise
spread over all channels.
"""

from __future__ import annotations

import numpy as np

from .. import store as st
from ..config import ConfigError, fingerprint
from ..datasets import ViewListing
from ..method import ridge_path
from . import families as fam
from . import worlds

SIMULATOR_VERSION = 2
LAYERS = fam.LAYERS
BLOCK_SIZE = 512
GROUP_BASE = 100000
MODELS = {**fam.FAMILIES, "random": worlds.RandomWorld}
PARAMS = {**fam.DEFAULTS, "random": worlds.PRIOR}   # each family's defaults (random: its prior)
FAMILIES = tuple(MODELS)
DEFAULT_FAMILY = "manifold"
DEFAULT_KNOBS = {k: v for k, v in fam.DEFAULTS[DEFAULT_FAMILY].items() if k not in fam.SIZES}
_l2 = fam.l2


def _cls(rng, desc: np.ndarray, noise: float) -> np.ndarray:
    return _l2(desc + fam.gauss_vec(rng, desc.shape, noise)).astype(np.float32)


def resolve(family: str = DEFAULT_FAMILY, **params) -> tuple[str, dict, dict]:
    """(family, sizes, knobs) with the family's defaults filled in; None means the default.
    Unknown names are refused with the valid ones listed."""
    if family not in MODELS:
        raise ConfigError(f"unknown simulator family {family!r}; valid: {', '.join(FAMILIES)}")
    defaults = PARAMS[family]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown simulator parameter(s) {unknown} for family {family}; valid: "
                         f"seed, {', '.join(sorted(defaults))}")
    given = {n: v for n, v in params.items() if v is not None}
    merged = {**defaults, **given}   # typed as the defaults, so 1 and 1.0 fingerprint alike
    merged = {n: type(defaults[n])(v) for n, v in merged.items()}
    return family, {n: merged[n] for n in fam.SIZES}, {n: v for n, v in merged.items() if n not in fam.SIZES}


def generate(*, family: str = DEFAULT_FAMILY, seed=0, **params) -> tuple[dict, dict]:
    """All arrays, keyed (split, view) -> {ids, labels, in_query, in_gallery, layer_k/...}, and
    the ground truth the store never holds: "<split>_drone_loc" (the satellite row of each drone
    row), "<split>_drone_expert" (its viewing regime) and "world" (the sizes and knobs drawn)."""
    family, sizes, k = resolve(family, **params)
    if family == "random":   # the seed draws the world's sizes and structure from the prior
        sizes, k = worlds.realise(seed, sizes, k)
    views = sizes["views"]
    streams = np.random.default_rng(seed).spawn(3)
    model = MODELS[family](streams[0], sizes["dim"], k)
    split_latents = family == "random"   # its test region differs from the train region
    out, truth = {}, {}
    for split, rng, n_loc, n_dis in (("train", streams[1], sizes["train_locs"], 0),
                                     ("test", streams[2], sizes["test_locs"], sizes["distractors"])):
        z = model.latents(rng, n_loc + n_dis, split) if split_latents else model.latents(rng, n_loc + n_dis)
        first = 0 if split == "train" else sizes["train_locs"]
        sat_labels = np.arange(first, first + n_loc + n_dis, dtype=np.int64)
        sat = model.satellite(rng, z)
        loc = np.repeat(np.arange(n_loc), views)
        view_idx = np.tile(np.arange(views), n_loc)
        expert = rng.integers(0, model.n_regimes, len(loc))
        drone = model.drone(rng, z[loc], loc, expert)
        drone_labels = sat_labels[loc]
        if split == "train":   # group ids that match no satellite, rows in shuffled group order
            groups = GROUP_BASE + rng.permutation(n_loc)
            order = np.lexsort((view_idx, groups[loc]))
            loc, view_idx, expert = loc[order], view_idx[order], expert[order]
            drone_labels = groups[loc]
            drone = {layer: v[order] for layer, v in drone.items()}
            drone_ids = [f"train/drone/g{g}/{j}" for g, j in zip(drone_labels, view_idx)]
        else:
            drone_ids = [f"test/drone/{g:06d}/{j}" for g, j in zip(drone_labels, view_idx)]
        truth[f"{split}_drone_loc"], truth[f"{split}_drone_expert"] = loc, expert
        in_query = np.arange(n_loc + n_dis) < n_loc
        for view, feats, ids, labels, flags in (
                ("satellite", sat, [f"{split}/satellite/{s:06d}/0" for s in sat_labels], sat_labels,
                 in_query),
                ("drone", drone, drone_ids, drone_labels, np.ones(len(loc), bool))):
            arrays = {"ids": ids, "labels": labels.astype(np.int64), "in_query": flags,
                      "in_gallery": np.ones(len(labels), bool)}
            for layer in LAYERS:
                arrays[f"layer_{layer}/desc"] = feats[layer]
                arrays[f"layer_{layer}/cls"] = _cls(rng, feats[layer], k["cls_noise"])
            out[split, view] = arrays
    truth["world"] = {**sizes, **k}
    return out, truth


def simulate(store_url: str, *, dataset="sim", family: str = DEFAULT_FAMILY, seed=0,
             overwrite=False, **params) -> dict:
    """Write the simulated store; return its summary with raw, domain-centred and oracle D2S R@1."""
    family, sizes, k = resolve(family, **params)
    spec = {"backbone": "simulator", "simulator_version": SIMULATOR_VERSION, "family": family,
            "layers": list(LAYERS), "seed": int(seed), **sizes, **k}
    data, truth = generate(family=family, seed=int(seed), **sizes, **k)
    dim = truth["world"]["dim"]
    root = st.open_store(store_url, mode="a")
    st.prepare_dataset(root, dataset, spec, fingerprint(spec), bool(overwrite))
    written = {}
    for (split, view), arrays in data.items():
        listing = ViewListing(split, view, list(arrays["ids"]), arrays["labels"],
                              arrays["in_query"], arrays["in_gallery"])
        layout = st.ViewLayout(list(LAYERS), int(dim), BLOCK_SIZE)
        group = st.prepare_view(root, dataset, listing, layout, {"simulator": spec})
        feats = {name: v for name, v in arrays.items() if name.startswith("layer_")}
        st.reopen_damaged_blocks(group)
        for block in st.pending_blocks(group):
            rows = st.block_rows(group, block)
            st.write_block(group, block, {n: v[rows] for n, v in feats.items()},
                           [""] * (rows.stop - rows.start))
        info = st.finalize_view(group)
        written[f"{split}/{view}"] = {"n": info["n"], "complete": info["complete"]}
    return {"stage": "simulate", "store": str(store_url), "dataset": dataset, "family": family,
            "params": {"seed": int(seed), **sizes}, "knobs": k, "world": truth["world"],
            "store_views": written,
            "d2s_r1": baselines(data, truth)}


# ----- reference numbers (a tiny local R@1; the official metrics live in metrics.py) -----

def _concat(arrays: dict, mean: dict | None = None) -> np.ndarray:
    parts = []
    for layer in LAYERS:
        x = arrays[f"layer_{layer}/desc"].astype(np.float64)
        parts.append(_l2(x - mean[layer]) if mean is not None else x)
    return _l2(np.concatenate(parts, axis=1))


def _means(arrays: dict) -> dict:
    return {layer: arrays[f"layer_{layer}/desc"].astype(np.float64).mean(0) for layer in LAYERS}


def recall_at_1(query, q_labels, gallery, g_labels) -> float:
    """Fraction of queries whose most similar gallery item carries their label."""
    best = np.argmax(query @ gallery.T, axis=1)
    return float(np.mean(g_labels[best] == q_labels))


def oracle_map(x, y, groups, seed=0):
    """Ridge map drone -> satellite from the true pairs, lambda picked on held-out train
    locations (a fifth of them); returns the map and the satellite mean it centres with."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    uniq = np.unique(groups)
    held = np.isin(groups, np.random.default_rng(seed).permutation(uniq)[: max(1, len(uniq) // 5)])
    _, first = np.unique(groups[held], return_index=True)
    fit = ridge_path(xc[~held], yc[~held])
    scale = np.trace(xc.T @ xc) / xc.shape[1]
    lams = scale * np.logspace(-3, 1, 9)
    scores = [recall_at_1(_l2(xc[held] @ fit(lam)), groups[held], _l2(yc[held])[first],
                          groups[held][first]) for lam in lams]
    w = ridge_path(xc, yc)(lams[int(np.argmax(scores))])
    return (lambda q: _l2((q - mx) @ w)), my


def baselines(data: dict, truth: dict) -> dict:
    """Raw (`heads=none`), domain-centred and supervised-oracle D2S R@1 on the test split.
    `oracle`: one ridge map fitted on the true train pairs; `oracle_regime`: one ridge map per
    viewing regime, each test drone mapped with its true regime (privileged: an upper reference
    for the families whose drones fall in discrete regimes)."""
    qd, gs = data["test", "drone"], data["test", "satellite"]
    q_lab, g_lab = qd["labels"], gs["labels"]
    raw = recall_at_1(_concat(qd), q_lab, _concat(gs), g_lab)
    centred = recall_at_1(_concat(qd, _means(qd)), q_lab, _concat(gs, _means(gs)), g_lab)
    td, ts = data["train", "drone"], data["train", "satellite"]
    loc = truth["train_drone_loc"]
    x, y, q = _concat(td), _concat(ts)[loc], _concat(qd)
    apply, my = oracle_map(x, y, loc)
    gallery = _l2(_concat(gs) - my)
    out = {"raw": raw, "centred": centred, "oracle": recall_at_1(apply(q), q_lab, gallery, g_lab)}
    regime, test_regime = truth["train_drone_expert"], truth["test_drone_expert"]
    if len(np.unique(regime)) > 1:
        mapped = np.zeros_like(q)
        for r in np.unique(test_regime):
            fit, _ = oracle_map(x[regime == r], y[regime == r], loc[regime == r])
            mapped[test_regime == r] = fit(q[test_regime == r])
        out["oracle_regime"] = recall_at_1(mapped, q_lab, gallery, g_lab)
    return out
