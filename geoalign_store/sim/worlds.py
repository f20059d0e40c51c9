"""`family=random`: a world generator, not one more story (issue 24).

The seven families are stories someone wrote; a recipe tuned on them is judged on worlds it was
built on. Here every seed draws a world's *structure* from a broad prior (`PRIOR`, frozen before
any method was measured on it), so "many worlds" means many structures:

- sizes: descriptor width C (a multiple of 40: AGRA's experts), train flights per dimension
  from 0.1 to 10 (log-uniform: where maps can and cannot be fitted), 2-60 views per flight,
  0-`distractors_max` distractors;
- content: a latent of 4..C/2 dimensions with a power-law spectrum, rendered linearly (z A) or
  through a random tanh layer; layer 26 mixes layer 28's content with its own;
- regions: latents from a mixture of clusters whose weights differ between the train and the
  test region, and a test region shifted as a whole (new locations are not like the old ones);
- viewing distortions of the drone, one kind per world: `discrete` regimes (each image one of
  2-5), `per_flight` (every flight its own distortion, shared by its images) or `continuous` (a
  per-flight scalar such as altitude, jittered per image), all as rotations of a random subspace
  of rank `rank_frac` C with a world-wide oblique base turn, of drawn strength;
- on either side: channel gains and a partial mixing (anisotropic, non-orthogonal), a domain
  offset, nuisance directions with per-image coefficients; per-flight offsets (weather) on the
  drone; an optional saturating non-linearity after the drone's distortion; noise on both.

`realise(seed, sizes, prior)` -> (sizes, world): the drawn sizes (a size given by the user is
kept) and the world's structure, a flat dict of numbers recorded in the store's spec.
"""

from __future__ import annotations

import numpy as np

from .families import LAYERS, _finish, gain_blend_map, gauss_vec, l2, orthogonal

DISTORTIONS = ("discrete", "per_flight", "continuous")

# The prior's bounds: the "defaults" of family=random (sizes 0: drawn per seed).
PRIOR = {
    "dim": 0, "train_locs": 0, "test_locs": 200, "views": 0, "distractors": -1,
    "dim_min": 80, "dim_max": 760, "flights_per_dim_min": 0.1, "flights_per_dim_max": 10.0,
    "train_locs_min": 60, "train_locs_max": 2000, "views_min": 2, "views_max": 60,
    "drone_rows_max": 24000, "distractors_max": 200, "cls_noise": 0.3,
}


def _loguniform(rng, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo)))))


def _draw_sizes(rng, sizes: dict, p: dict) -> dict:
    """Sizes the user left at 0 (-1 for distractors) drawn from the prior."""
    out = dict(sizes)
    per_dim = _loguniform(rng, p["flights_per_dim_min"], p["flights_per_dim_max"])
    if not out["dim"]:
        lo = max(p["dim_min"], p["train_locs_min"] / per_dim)
        hi = min(p["dim_max"], p["train_locs_max"] / per_dim)
        out["dim"] = int(np.clip(40 * round(_loguniform(rng, lo, hi) / 40), 40, p["dim_max"]))
    if not out["train_locs"]:
        out["train_locs"] = int(np.clip(round(per_dim * out["dim"]), p["train_locs_min"], p["train_locs_max"]))
    if not out["views"]:
        cap = max(p["views_min"], p["drone_rows_max"] // out["train_locs"])
        out["views"] = int(round(_loguniform(rng, p["views_min"], min(p["views_max"], cap))))
    if out["distractors"] < 0:
        out["distractors"] = int(rng.integers(0, p["distractors_max"] + 1))
    return out


def _draw_world(rng, dim: int) -> dict:
    """The structure of one world: a flat dict of numbers (recorded in the store's spec)."""
    u = rng.uniform
    kind = int(rng.integers(0, len(DISTORTIONS)))
    return {
        "latent_dim": int(round(_loguniform(rng, 4, dim / 2))), "content_alpha": u(0, 1.5),
        "nonlinear": int(rng.random() < 0.5), "embed_gain": u(0.5, 3.0), "layer26_mix": u(0.3, 0.9),
        "clusters": int(rng.integers(1, 9)), "cluster_sep": u(0, 2.0), "test_shift": u(0, 1.0),
        "distortion": kind, "regimes": int(rng.integers(2, 6)), "factors": int(rng.integers(1, 4)),
        "jitter": u(0, 0.2), "strength": u(0, 0.5), "base_turn": u(0, 1.0),
        "rank_frac": _loguniform(rng, 0.05, 1.0), "regime_offset": u(0, 0.5),
        "sat_gain_spread": u(0, 0.5), "sat_mix": u(0, 0.5), "drone_gain_spread": u(0, 0.8),
        "drone_mix": u(0, 0.6), "sat_offset": u(0, 1.5), "domain_offset": u(0, 2.0),
        "sat_nuisance_dirs": int(rng.integers(0, 9)), "sat_nuisance": u(0, 0.8),
        "nuisance_dirs": int(rng.integers(0, 9)), "nuisance": u(0, 1.5),
        "flight_offset": u(0, 0.6), "saturation": u(0.5, 2.0) if rng.random() < 0.3 else 0.0,
        "sat_noise": u(0.05, 0.4), "drone_noise": u(0.1, 0.9),
    }


def realise(seed: int, sizes: dict, prior: dict) -> tuple[dict, dict]:
    """(sizes, world) for `seed`: its own stream, so the same seed draws the same world."""
    rng = np.random.default_rng([int(seed), 0x7A11D])
    sizes = _draw_sizes(rng, sizes, prior)
    return sizes, {**_draw_world(rng, sizes["dim"]), "cls_noise": prior["cls_noise"]}


class RandomWorld:
    """The generative model of one drawn world (`realise`); the simulator's family interface."""

    def __init__(self, rng, dim: int, w: dict):
        self.k, self.dim = w, dim
        self.kind = DISTORTIONS[int(w["distortion"])]
        self.n_regimes = int(w["regimes"]) if self.kind == "discrete" else 1
        d = int(w["latent_dim"])
        spectrum = np.arange(1, d + 1, dtype=float) ** (-w["content_alpha"])
        self.scales = np.sqrt(spectrum / spectrum.mean())
        self.centres = rng.standard_normal((int(w["clusters"]), d)) * w["cluster_sep"]
        self.weights = {s: rng.dirichlet(np.ones(int(w["clusters"]))) for s in ("train", "test")}
        self.shift = l2(rng.standard_normal(d)) * w["test_shift"] * np.sqrt(d)
        self._content(rng, d, dim)
        sample = self._rendered(self.latents(np.random.default_rng(0), 4096))   # sets the scale
        self.norm = {layer: 1.0 / np.sqrt(np.mean(np.sum(v ** 2, 1))) for layer, v in sample.items()}
        planes = max(1, int(w["rank_frac"] * dim) // 2)
        coef_dim = {"discrete": 1, "per_flight": int(w["factors"]), "continuous": 1}[self.kind]
        self.regime_coef = rng.standard_normal((self.n_regimes, coef_dim))
        self.layer = {layer: self._layer(rng, dim, planes, coef_dim) for layer in LAYERS}

    def _content(self, rng, d: int, dim: int) -> None:
        hidden = 2 * dim
        self.first = rng.standard_normal((d, hidden)) / np.sqrt(d)
        mix = self.k["layer26_mix"]
        make = (lambda n: rng.standard_normal((n, dim)) / np.sqrt(n))  # noqa: E731
        n_in = hidden if self.k["nonlinear"] else d
        a28, own = make(n_in), make(n_in)
        self.render = {28: a28, 26: mix * a28 + np.sqrt(1 - mix ** 2) * own}

    def _layer(self, rng, dim: int, planes: int, coef_dim: int) -> dict:
        w = self.k
        strength = w["strength"] * np.pi
        return {
            "Q": orthogonal(rng, dim), "planes": planes,
            "base": rng.uniform(-1, 1, planes) * w["base_turn"] * np.pi,
            "theta": rng.standard_normal((coef_dim, planes)) * strength / np.sqrt(coef_dim),
            "S": gain_blend_map(rng, dim, w["sat_gain_spread"], w["sat_mix"]),
            "M": gain_blend_map(rng, dim, w["drone_gain_spread"], w["drone_mix"]),
            "o": gauss_vec(rng, (self.n_regimes, dim), w["regime_offset"]),
            "m_sat": gauss_vec(rng, (dim,), w["sat_offset"]),
            "m_drone": gauss_vec(rng, (dim,), w["domain_offset"]),
            "nuis_sat": _directions(rng, dim, int(w["sat_nuisance_dirs"])),
            "nuis_drone": _directions(rng, dim, int(w["nuisance_dirs"])),
        }

    # ----- the family interface
    def latents(self, rng, n: int, split: str = "train") -> np.ndarray:
        cluster = rng.choice(len(self.centres), n, p=self.weights[split])
        z = self.centres[cluster] + rng.standard_normal((n, len(self.scales)))
        return z + (self.shift if split == "test" else 0.0)

    def _rendered(self, z) -> dict:
        x = z * self.scales
        if self.k["nonlinear"]:
            x = np.tanh(self.k["embed_gain"] * x @ self.first / np.sqrt(len(self.scales)))
        return {layer: x @ a for layer, a in self.render.items()}

    def clean(self, z) -> dict:
        """Content of unit norm on average over the train region."""
        return {layer: v * self.norm[layer] for layer, v in self._rendered(z).items()}

    def satellite(self, rng, z) -> dict:
        w, out = self.k, {}
        coef = _nuisance(rng, len(z), int(w["sat_nuisance_dirs"]), w["sat_nuisance"])
        for layer, x in self.clean(z).items():
            p = self.layer[layer]
            y = x @ p["S"] + p["m_sat"] + coef @ p["nuis_sat"]
            out[layer] = _finish(y + gauss_vec(rng, x.shape, w["sat_noise"]))
        return out

    def _coefficients(self, rng, flight, regime) -> np.ndarray:
        """Each drone image's distortion coefficients, by the world's kind of distortion."""
        w, n = self.k, len(flight)
        n_flights = int(flight.max()) + 1 if n else 0
        if self.kind == "discrete":
            return self.regime_coef[regime]
        if self.kind == "per_flight":
            own = rng.standard_normal((n_flights, self.regime_coef.shape[1]))
            return own[flight] + w["jitter"] * rng.standard_normal((n, own.shape[1]))
        altitude = rng.uniform(0, 1, (n_flights, 1))[flight]
        return np.clip(altitude + w["jitter"] * rng.standard_normal((n, 1)), 0, 1)

    def drone(self, rng, z, flight, regime) -> dict:
        w, n = self.k, len(z)
        coef = self._coefficients(rng, flight, regime)
        nuis = _nuisance(rng, n, int(w["nuisance_dirs"]), w["nuisance"])
        n_flights = int(flight.max()) + 1 if n else 0
        weather = gauss_vec(rng, (n_flights, self.dim), w["flight_offset"])[flight]
        out = {}
        for layer, x in self.clean(z).items():
            p = self.layer[layer]
            y = _turn(x @ p["M"], coef @ p["theta"] + p["base"], p["Q"], p["planes"])
            if w["saturation"]:
                a = w["saturation"] * np.sqrt(self.dim)
                y = (a * y) / (1 + np.abs(a * y)) / a
            y = y + p["o"][regime] + p["m_drone"] + weather + nuis @ p["nuis_drone"]
            out[layer] = _finish(y + gauss_vec(rng, x.shape, w["drone_noise"]))
        return out


def _nuisance(rng, n: int, dirs: int, norm: float) -> np.ndarray:
    """Per-image coefficients on `dirs` nuisance directions, of expected total norm ~`norm`."""
    return rng.standard_normal((n, dirs)) * (norm / np.sqrt(max(dirs, 1)))


def _directions(rng, dim: int, k: int) -> np.ndarray:
    """k orthonormal directions as rows (0 x dim for none)."""
    return np.linalg.qr(rng.standard_normal((dim, k)))[0].T if k else np.zeros((0, dim))


def _turn(x: np.ndarray, angle: np.ndarray, q: np.ndarray, planes: int) -> np.ndarray:
    """Each row turned, in q's basis, by its own angle in each of the first `planes` planes."""
    y = x @ q
    a, b = y[:, 0:2 * planes:2].copy(), y[:, 1:2 * planes:2].copy()
    cos, sin = np.cos(angle), np.sin(angle)
    y[:, 0:2 * planes:2], y[:, 1:2 * planes:2] = a * cos - b * sin, a * sin + b * cos
    return y @ q.T
