"""A feature-level cross-view simulator: a store with known ground truth (SPEC §6, issue 4).

It writes `features/<dataset>/{train,test}/{drone,satellite}` in the SPEC §3 layout (through
`store.py`, the only code that knows the layout) with layers 26 and 28, so fit-heads, index and
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

from . import store as st
from .config import fingerprint
from .datasets import ViewListing

SIMULATOR_VERSION = 1
LAYERS = (26, 28)
BLOCK_SIZE = 512
GROUP_BASE = 100000
DEFAULT_KNOBS = {
    "latent_dim": 16, "embed_gain": 2.0, "redundant_frac": 0.25, "layer26_mix": 0.6,
    "experts": 4, "expert_mix": 0.65, "expert_gain": 1.5, "expert_offset": 0.5,
    "domain_offset": 1.5, "sat_offset": 1.0, "nuisance_dirs": 4, "nuisance_std": 0.8,
    "sat_noise": 0.15, "drone_noise": 0.4, "cls_noise": 0.3,
}


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _gauss_vec(rng, shape, norm: float) -> np.ndarray:
    """Gaussian vectors of expected norm ~`norm` along the last axis."""
    return rng.standard_normal(shape) * (norm / np.sqrt(shape[-1]))


def _orthogonal(rng, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


class _Model:
    """The fixed random parameters of the generative model (drawn from the model stream)."""

    def __init__(self, rng, dim: int, k: dict):
        self.k = k
        self.free = dim - int(round(dim * k["redundant_frac"]))
        d, f, hidden = k["latent_dim"], self.free, 2 * self.free
        self.embed = [(rng.standard_normal((d, hidden)) / np.sqrt(d),
                       rng.standard_normal((hidden, f)) / np.sqrt(hidden)) for _ in range(2)]
        self.layer = {}
        for layer in LAYERS:
            self.layer[layer] = {
                "redund": rng.standard_normal((f, dim - f)) / np.sqrt(f),
                "Q": np.stack([_orthogonal(rng, f) for _ in range(k["experts"])]),
                "o": _gauss_vec(rng, (k["experts"], f), k["expert_offset"]),
                "m_sat": _gauss_vec(rng, (f,), k["sat_offset"]),
                "m_drone": _gauss_vec(rng, (f,), k["domain_offset"]),
                "nuis": np.linalg.qr(rng.standard_normal((f, k["nuisance_dirs"])))[0].T,
            }
        z = rng.standard_normal((4096, d))   # a fixed sample sets the embedding's scale
        self.scale = [1.0 / np.linalg.norm(self._raw_embed(z, i), axis=1).mean() for i in range(2)]

    def _raw_embed(self, z, i):
        a, b = self.embed[i]
        return np.tanh(self.k["embed_gain"] * z @ a) @ b

    def clean(self, z) -> dict:
        e28 = self._raw_embed(z, 0) * self.scale[0]
        own = self._raw_embed(z, 1) * self.scale[1]
        mix = self.k["layer26_mix"]
        return {28: e28, 26: mix * e28 + np.sqrt(1 - mix ** 2) * own}

    def finish(self, layer: int, x) -> np.ndarray:
        """Append the redundant channels and L2-normalise."""
        return _l2(np.concatenate([x, x @ self.layer[layer]["redund"]], axis=1)).astype(np.float32)

    def satellite(self, rng, z) -> dict:
        clean = self.clean(z)
        return {layer: self.finish(layer, clean[layer] + self.layer[layer]["m_sat"]
                                   + _gauss_vec(rng, clean[layer].shape, self.k["sat_noise"]))
                for layer in LAYERS}

    def drone(self, rng, z, expert) -> dict:
        k, clean = self.k, self.clean(z)
        coef = rng.standard_normal((len(z), k["nuisance_dirs"])) * k["nuisance_std"]
        out = {}
        for layer in LAYERS:
            p, x = self.layer[layer], clean[layer]
            u = (1 - k["expert_mix"]) * x
            for j in range(k["experts"]):   # a handful of experts, each applied to its rows at once
                rows = expert == j
                u[rows] += k["expert_mix"] * x[rows] @ p["Q"][j]
            gain = k["expert_gain"] * np.sqrt(self.free)   # channels of u are ~1/sqrt(free)
            y = np.tanh(gain * u) / gain
            y = y + p["o"][expert] + p["m_drone"] + coef @ p["nuis"]
            out[layer] = self.finish(layer, y + _gauss_vec(rng, x.shape, k["drone_noise"]))
        return out


def _cls(rng, desc: np.ndarray, noise: float) -> np.ndarray:
    return _l2(desc + _gauss_vec(rng, desc.shape, noise)).astype(np.float32)


def generate(*, seed=0, dim=240, train_locs=200, test_locs=200, views=8, distractors=50,
             **knobs) -> tuple[dict, dict]:
    """All arrays, keyed (split, view) -> {ids, labels, in_query, in_gallery, layer_k/...}, and
    the ground truth the store never holds: "<split>_drone_loc" (the satellite row of each drone
    row) and "<split>_drone_expert" (its distortion)."""
    k = _knobs(knobs)
    streams = np.random.default_rng(seed).spawn(3)
    model = _Model(streams[0], dim, k)
    out, truth = {}, {}
    for split, rng, n_loc, n_dis in (("train", streams[1], train_locs, 0),
                                     ("test", streams[2], test_locs, distractors)):
        z = rng.standard_normal((n_loc + n_dis, k["latent_dim"]))
        first = 0 if split == "train" else train_locs
        sat_labels = np.arange(first, first + n_loc + n_dis, dtype=np.int64)
        sat = model.satellite(rng, z)
        loc = np.repeat(np.arange(n_loc), views)
        view_idx = np.tile(np.arange(views), n_loc)
        expert = rng.integers(0, k["experts"], len(loc))
        drone = model.drone(rng, z[loc], expert)
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
    return out, truth


def _knobs(knobs: dict) -> dict:
    unknown = sorted(set(knobs) - set(DEFAULT_KNOBS))
    if unknown:
        raise ValueError(f"unknown simulator parameter(s) {unknown}; valid: "
                         f"seed, dim, train_locs, test_locs, views, distractors, "
                         f"{', '.join(sorted(DEFAULT_KNOBS))}")
    k = {**DEFAULT_KNOBS, **knobs}   # typed as the defaults, so 1 and 1.0 fingerprint alike
    return {n: type(DEFAULT_KNOBS[n])(v) for n, v in k.items()}


def simulate(store_url: str, *, dataset="sim", seed=0, dim=240, train_locs=200, test_locs=200,
             views=8, distractors=50, overwrite=False, **knobs) -> dict:
    """Write the simulated store; return its summary with raw, domain-centred and oracle D2S R@1."""
    params = {"seed": int(seed), "dim": int(dim), "train_locs": int(train_locs),
              "test_locs": int(test_locs), "views": int(views), "distractors": int(distractors)}
    k = _knobs(knobs)
    spec = {"backbone": "simulator", "simulator_version": SIMULATOR_VERSION,
            "layers": list(LAYERS), **params, **k}
    data, truth = generate(**params, **k)
    root = st.open_store(store_url, mode="a")
    st.prepare_dataset(root, dataset, spec, fingerprint(spec), bool(overwrite))
    written = {}
    for (split, view), arrays in data.items():
        listing = ViewListing(split, view, list(arrays["ids"]), arrays["labels"],
                              arrays["in_query"], arrays["in_gallery"])
        layout = st.ViewLayout(list(LAYERS), int(dim), BLOCK_SIZE)
        group = st.prepare_view(root, dataset, listing, layout, {"simulator": spec})
        feats = {name: v for name, v in arrays.items() if name.startswith("layer_")}
        for block in st.pending_blocks(group):
            rows = st.block_rows(group, block)
            st.write_block(group, block, {n: v[rows] for n, v in feats.items()},
                           [""] * (rows.stop - rows.start))
        info = st.finalize_view(group)
        written[f"{split}/{view}"] = {"n": info["n"], "complete": info["complete"]}
    return {"stage": "simulate", "store": str(store_url), "dataset": dataset, "params": params,
            "knobs": k, "store_views": written, "d2s_r1": baselines(data, truth)}


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


def _ridge_path(x, y):
    """Ridge solutions for many lambdas from one eigendecomposition of x^T x."""
    evals, evecs = np.linalg.eigh(x.T @ x)
    xty = evecs.T @ (x.T @ y)
    return lambda lam: evecs @ (xty / (evals + lam)[:, None])


def oracle_map(x, y, groups, seed=0):
    """Ridge map drone -> satellite from the true pairs, lambda picked on held-out train
    locations (a fifth of them); returns the map and the satellite mean it centres with."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    uniq = np.unique(groups)
    held = np.isin(groups, np.random.default_rng(seed).permutation(uniq)[: max(1, len(uniq) // 5)])
    _, first = np.unique(groups[held], return_index=True)
    fit = _ridge_path(xc[~held], yc[~held])
    scale = np.trace(xc.T @ xc) / xc.shape[1]
    lams = scale * np.logspace(-3, 1, 9)
    scores = [recall_at_1(_l2(xc[held] @ fit(lam)), groups[held], _l2(yc[held])[first],
                          groups[held][first]) for lam in lams]
    w = _ridge_path(xc, yc)(lams[int(np.argmax(scores))])
    return (lambda q: _l2((q - mx) @ w)), my


def baselines(data: dict, truth: dict) -> dict:
    """Raw (`heads=none`), domain-centred and supervised-oracle D2S R@1 on the test split."""
    qd, gs = data["test", "drone"], data["test", "satellite"]
    q_lab, g_lab = qd["labels"], gs["labels"]
    raw = recall_at_1(_concat(qd), q_lab, _concat(gs), g_lab)
    centred = recall_at_1(_concat(qd, _means(qd)), q_lab, _concat(gs, _means(gs)), g_lab)
    td, ts = data["train", "drone"], data["train", "satellite"]
    loc = truth["train_drone_loc"]
    apply, my = oracle_map(_concat(td), _concat(ts)[loc], loc)
    oracle = recall_at_1(apply(_concat(qd)), q_lab, _l2(_concat(gs) - my), g_lab)
    return {"raw": raw, "centred": centred, "oracle": oracle}
