"""The generative models of the cross-view simulator family (SPEC §6, issue 8).

Each family is a structurally different story of how drone descriptors depart from satellite
ones. A family draws its fixed parameters from the model stream in `__init__` and then, per split,
location latents, satellite descriptors (one image per location) and drone descriptors (one row
per drone image, given its location's latent, its flight index and its viewing regime). Every
output is {layer: (n, dim) float32, L2-normalised} for layers 26 and 28. The driver
(`simulator.py`) owns sizes, splits, ids, grouping and the store.

Families (defaults in DEFAULTS, frozen before any method is measured on them):

- `manifold`: location content on a low-dimensional non-linear manifold; each drone image is
  partly rotated by one of a few "experts", squashed by an elementwise tanh, offset per expert,
  plus a domain offset, nuisance directions and noise (the original simulator).
- `regimes`: high-dimensional linear content; each drone image is seen in one of a few discrete
  viewing regimes, each a rotation of most of the descriptor space (a random subspace), with a
  small per-regime offset, a domain offset, strong nuisance directions and modest noise. Whitening
  and truncation lose information here.
- `flightshift`: low-rank linear content under one global anisotropic (non-orthogonal) linear
  distortion; every flight carries its own offset shared by all its images (weather, season,
  time of day: averaging a flight does not remove it) and the noise is heavy-tailed.
- `neighbours`: locations on a 2-D map whose content is a smooth random field (nearby locations
  look alike: hard negatives); an oblique drone image sees a point displaced from its location,
  through per-channel gains that depend on its altitude regime, plus a domain offset and noise.
- `outliers`: full-rank content with a power-law spectrum (like real ViT features: no clean low
  rank, no flat spectrum) on top of which a few fixed "massive activation" channels, shared by both
  views and both layers, carry a large magnitude that varies per image independently of location
  (a nuisance that dominates the cosine). Neither view is clean: the satellite passes through its
  own fixed linear map (per-channel gains and a partial rotation), the drone through another; each
  drone image mixes in, with its own weight, the content of another location of the split (a wide
  oblique view sees neighbouring areas / clutter); every flight has its own per-channel gains
  (camera response, exposure), plus domain offsets and noise in both views.
- `scenes`: every location belongs to one of a few scene types (urban, rural, water, forest...:
  clusters in content space) and the drone view's distortion depends on the scene, chosen by the
  location's own content (its nearest scene centre), not by a viewing regime or a flight: each
  scene has its own linear map (per-channel gains and a partial rotation) and offset, followed by
  an elementwise saturating non-linearity (softsign: activation saturation); every drone image has
  a random fraction of its channels occluded (replaced by clutter noise); few images per flight
  and many flights; the satellite view has its own mild map, and both views domain offsets and
  noise.
- `altitude`: a continuum of distortions, not regimes: every flight has its own altitude (a
  number in [0, 1], jittered per image) and the drone map is a rotation flow whose angle grows as
  the altitude drops, on top of a fixed oblique-view rotation (each layer with its own flow; layer
  26 turns less with depth than layer 28), through
  latent gains that fade part of the layout the satellite sees, while a low flight also sees
  location-specific detail that the satellite never shows (drone-only content, consistent within a
  location: it clusters a location's drone images without helping to match them).
"""

from __future__ import annotations

import numpy as np

LAYERS = (26, 28)
SIZES = ("dim", "train_locs", "test_locs", "views", "distractors")


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def gauss_vec(rng, shape, norm: float) -> np.ndarray:
    """Gaussian vectors of expected norm ~`norm` along the last axis."""
    return rng.standard_normal(shape) * (norm / np.sqrt(shape[-1]))


def orthogonal(rng, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def gain_blend_map(rng, dim: int, gain_spread: float, mix: float) -> np.ndarray:
    """diag(log-normal gains) ((1 - mix) I + mix O), O orthogonal: x @ this = (x * gains) (...)."""
    gains = np.exp(gain_spread * rng.standard_normal(dim))
    return gains[:, None] * ((1 - mix) * np.eye(dim) + mix * orthogonal(rng, dim))


def _finish(x: np.ndarray) -> np.ndarray:
    return l2(x).astype(np.float32)


class Manifold:
    """The original model; see simulator.py's docstring for its equations."""

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
                "Q": np.stack([orthogonal(rng, f) for _ in range(k["experts"])]),
                "o": gauss_vec(rng, (k["experts"], f), k["expert_offset"]),
                "m_sat": gauss_vec(rng, (f,), k["sat_offset"]),
                "m_drone": gauss_vec(rng, (f,), k["domain_offset"]),
                "nuis": np.linalg.qr(rng.standard_normal((f, k["nuisance_dirs"])))[0].T,
            }
        z = rng.standard_normal((4096, d))   # a fixed sample sets the embedding's scale
        self.scale = [1.0 / np.linalg.norm(self._raw_embed(z, i), axis=1).mean() for i in range(2)]
        self.n_regimes = k["experts"]

    def latents(self, rng, n: int) -> np.ndarray:
        return rng.standard_normal((n, self.k["latent_dim"]))

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
        return _finish(np.concatenate([x, x @ self.layer[layer]["redund"]], axis=1))

    def satellite(self, rng, z) -> dict:
        clean = self.clean(z)
        return {layer: self.finish(layer, clean[layer] + self.layer[layer]["m_sat"]
                                   + gauss_vec(rng, clean[layer].shape, self.k["sat_noise"]))
                for layer in LAYERS}

    def drone(self, rng, z, flight, expert) -> dict:
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
            out[layer] = self.finish(layer, y + gauss_vec(rng, x.shape, k["drone_noise"]))
        return out


class _Linear:
    """Shared by the linear-content families: content e_k(z) = z A_k, unit norm on average, with
    layer 26 a mixture of layer 28's content and its own."""

    def _content_maps(self, rng, d: int, dim: int, mix: float):
        a28 = rng.standard_normal((d, dim)) / np.sqrt(dim)
        own = rng.standard_normal((d, dim)) / np.sqrt(dim)
        self.content = {28: a28, 26: mix * a28 + np.sqrt(1 - mix ** 2) * own}

    def clean(self, z) -> dict:
        scale = 1.0 / np.sqrt(z.shape[1])
        return {layer: scale * z @ a for layer, a in self.content.items()}


class Regimes(_Linear):
    def __init__(self, rng, dim: int, k: dict):
        self.k, self.n_regimes = k, k["regimes"]
        d = int(round(k["content_frac"] * dim))
        self._content_maps(rng, d, dim, k["layer26_mix"])
        self.d = d
        r = int(round(k["rotated_frac"] * dim))
        self.layer = {}
        for layer in LAYERS:
            basis = orthogonal(rng, dim)[:, :r]                 # the rotated subspace
            self.layer[layer] = {
                "basis": basis,
                "Q": np.stack([orthogonal(rng, r) for _ in range(k["regimes"])]),
                "o": gauss_vec(rng, (k["regimes"], dim), k["regime_offset"]),
                "m_sat": gauss_vec(rng, (dim,), k["sat_offset"]),
                "m_drone": gauss_vec(rng, (dim,), k["domain_offset"]),
                "nuis": np.linalg.qr(rng.standard_normal((dim, k["nuisance_dirs"])))[0].T,
            }

    def latents(self, rng, n: int) -> np.ndarray:
        return rng.standard_normal((n, self.d))

    def satellite(self, rng, z) -> dict:
        return {layer: _finish(x + self.layer[layer]["m_sat"] + gauss_vec(rng, x.shape, self.k["sat_noise"]))
                for layer, x in self.clean(z).items()}

    def drone(self, rng, z, flight, regime) -> dict:
        k, out = self.k, {}
        coef = rng.standard_normal((len(z), k["nuisance_dirs"])) * k["nuisance_std"]
        for layer, x in self.clean(z).items():
            p = self.layer[layer]
            inside = x @ p["basis"]                              # coordinates in the rotated subspace
            rotated = np.einsum("nr,nrs->ns", inside, p["Q"][regime])
            y = x + (rotated - inside) @ p["basis"].T
            y = y + p["o"][regime] + p["m_drone"] + coef @ p["nuis"]
            out[layer] = _finish(y + gauss_vec(rng, x.shape, k["drone_noise"]))
        return out


class FlightShift(_Linear):
    def __init__(self, rng, dim: int, k: dict):
        self.k, self.n_regimes = k, 1
        self._content_maps(rng, k["latent_dim"], dim, k["layer26_mix"])
        self.layer = {}
        for layer in LAYERS:
            gains = np.exp(k["gain_spread"] * rng.standard_normal(dim))
            basis = orthogonal(rng, dim)
            mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
            self.layer[layer] = {    # anisotropic and mixing: not orthogonal, not near identity
                "G": (1 - k["mix"]) * (basis * gains) @ basis.T + k["mix"] * mixing,
                "m_sat": gauss_vec(rng, (dim,), k["sat_offset"]),
                "m_drone": gauss_vec(rng, (dim,), k["domain_offset"]),
            }
        self.flight_offsets: dict = {}

    def latents(self, rng, n: int) -> np.ndarray:
        return rng.standard_normal((n, self.k["latent_dim"]))

    def satellite(self, rng, z) -> dict:
        return {layer: _finish(x + self.layer[layer]["m_sat"] + gauss_vec(rng, x.shape, self.k["sat_noise"]))
                for layer, x in self.clean(z).items()}

    def _heavy_noise(self, rng, shape) -> np.ndarray:
        """Student-t (df 3) noise of expected norm ~drone_noise: occasional large outliers."""
        df = 3.0
        t = rng.standard_normal(shape) / np.sqrt(rng.chisquare(df, (shape[0], 1)) / df)
        return t * (self.k["drone_noise"] / np.sqrt(shape[1] * df / (df - 2)))

    def drone(self, rng, z, flight, regime) -> dict:
        k, out = self.k, {}
        n_flights = int(flight.max()) + 1 if len(flight) else 0
        shared = gauss_vec(rng, (n_flights, z.shape[1]), 1.0)   # per-flight condition, both layers
        for layer, x in self.clean(z).items():
            p = self.layer[layer]
            offset = (shared @ self.content[layer]) / np.sqrt(z.shape[1])
            offset = l2(offset) * k["flight_offset"]
            y = x @ p["G"] + offset[flight] + p["m_drone"]
            out[layer] = _finish(y + self._heavy_noise(rng, x.shape))
        return out


class Neighbours:
    def __init__(self, rng, dim: int, k: dict):
        self.k, self.n_regimes = k, k["regimes"]
        n_feat = k["field_features"]
        self.freq = rng.standard_normal((2, n_feat)) / k["length_scale"]
        self.phase = rng.uniform(0, 2 * np.pi, n_feat)
        mix = k["layer26_mix"]
        b28 = rng.standard_normal((n_feat, dim)) / np.sqrt(n_feat * dim)   # unit norm on average
        own = rng.standard_normal((n_feat, dim)) / np.sqrt(n_feat * dim)
        self.mix = {28: b28, 26: mix * b28 + np.sqrt(1 - mix ** 2) * own}
        self.layer = {layer: {
            "gain": np.exp(k["gain_spread"] * rng.standard_normal((k["regimes"], dim))),
            "M": (1 - k["mix"]) * np.eye(dim) + k["mix"] * orthogonal(rng, dim),
            "m_sat": gauss_vec(rng, (dim,), k["sat_offset"]),
            "m_drone": gauss_vec(rng, (dim,), k["domain_offset"]),
        } for layer in LAYERS}

    def latents(self, rng, n: int) -> np.ndarray:
        """Map coordinates: locations spread over a square at unit density, each split its own
        draw over the same square (the map is shared, so test locations neighbour train ones)."""
        side = np.sqrt(self.k["map_locations"])
        return rng.uniform(0, side, (n, 2))

    def clean(self, pos) -> dict:
        feats = np.cos(pos @ self.freq + self.phase) * np.sqrt(2.0)
        return {layer: feats @ b for layer, b in self.mix.items()}

    def satellite(self, rng, pos) -> dict:
        return {layer: _finish(x + self.layer[layer]["m_sat"] + gauss_vec(rng, x.shape, self.k["sat_noise"]))
                for layer, x in self.clean(pos).items()}

    def drone(self, rng, pos, flight, regime) -> dict:
        k = self.k
        angle = rng.uniform(0, 2 * np.pi, len(pos))
        seen = pos + k["view_shift"] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        out = {}
        for layer, x in self.clean(seen).items():
            p = self.layer[layer]
            y = (x * p["gain"][regime]) @ p["M"] + p["m_drone"]
            out[layer] = _finish(y + gauss_vec(rng, x.shape, k["drone_noise"]))
        return out


class Outliers:
    """Power-law content, massive-activation channels, a distorting map on each view, clutter from
    other locations in the drone images and per-flight channel gains (see the module docstring).

    Per layer k, location latent z ~ N(0, I_dim), content c_k(z) = (z * s) U_k with s_i^2 ~ i^-alpha
    (sum 1: unit norm on average) and U_k orthogonal; layer 26 mixes layer 28's content with its
    own. View map of view v: x -> (x * g_v) ((1 - mix_v) I + mix_v O_v), g_v log-normal gains,
    O_v orthogonal. Massive channels: `massive_dims` fixed channels with base values b (norm
    `massive_scale`, decreasing magnitudes, fixed signs); each image adds
    b * exp(spread eps - spread^2 / 2) (eps ~ N(0, 1) per image and channel, shared by both layers
    of that image, independent of the location and across views).
    satellite: L2(map_sat(c(z)) + m_sat + massive + sat_noise n);
    drone:     L2(map_drone(((1 - w) c(z) + w c(z')) * f_flight) + m_drone + massive
                  + drone_noise n),
    w ~ U(0, clutter_max) per image, z' the latent of another location of the split, f_flight
    log-normal per-channel gains (std `flight_gain`) shared by the flight's images."""

    def __init__(self, rng, dim: int, k: dict):
        self.k, self.n_regimes, self.dim = k, 1, dim
        spectrum = np.arange(1, dim + 1, dtype=float) ** (-k["content_alpha"])
        self.s = np.sqrt(spectrum / spectrum.sum())
        u28, own = orthogonal(rng, dim), orthogonal(rng, dim)
        mix = k["layer26_mix"]
        self.content = {28: u28, 26: mix * u28 + np.sqrt(1 - mix ** 2) * own}
        self.massive_idx = rng.choice(dim, k["massive_dims"], replace=False)
        base = np.linspace(1.0, 0.4, k["massive_dims"]) * rng.choice([-1.0, 1.0], k["massive_dims"])
        self.massive_base = base / np.linalg.norm(base) * k["massive_scale"]
        self.layer = {}
        for layer in LAYERS:
            self.layer[layer] = {view: gain_blend_map(rng, dim, k["gain_spread"], k[f"{view}_mix"])
                                 for view in ("sat", "drone")}
            self.layer[layer]["m_sat"] = gauss_vec(rng, (dim,), k["sat_offset"])
            self.layer[layer]["m_drone"] = gauss_vec(rng, (dim,), k["domain_offset"])

    def latents(self, rng, n: int) -> np.ndarray:
        return rng.standard_normal((n, self.dim))

    def clean(self, z) -> dict:
        return {layer: (z * self.s) @ u for layer, u in self.content.items()}

    def _massive(self, rng, n: int) -> np.ndarray:
        spread = self.k["massive_spread"]
        factor = np.exp(spread * rng.standard_normal((n, self.k["massive_dims"])) - spread ** 2 / 2)
        out = np.zeros((n, self.dim))
        out[:, self.massive_idx] = factor * self.massive_base
        return out

    def satellite(self, rng, z) -> dict:
        k, massive, out = self.k, self._massive(rng, len(z)), {}
        for layer, x in self.clean(z).items():
            p = self.layer[layer]
            y = x @ p["sat"] + p["m_sat"] + massive
            out[layer] = _finish(y + gauss_vec(rng, x.shape, k["sat_noise"]))
        return out

    def drone(self, rng, z, flight, regime) -> dict:
        k, n = self.k, len(z)
        n_flights = int(flight.max()) + 1 if n else 0
        by_flight = np.zeros((n_flights, self.dim))
        by_flight[flight] = z
        other = (flight + rng.integers(1, max(n_flights, 2), n)) % max(n_flights, 1)
        w = rng.uniform(0, k["clutter_max"], (n, 1))
        gains = np.exp(k["flight_gain"] * rng.standard_normal((n_flights, self.dim)))[flight]
        massive = self._massive(rng, n)
        own, clutter, out = self.clean(z), self.clean(by_flight[other]), {}
        for layer in LAYERS:
            p = self.layer[layer]
            seen = ((1 - w) * own[layer] + w * clutter[layer]) * gains
            y = seen @ p["drone"] + p["m_drone"] + massive
            out[layer] = _finish(y + gauss_vec(rng, y.shape, k["drone_noise"]))
        return out


class Scenes(_Linear):
    """Scene-gated drone distortion, saturation and occlusion (see the module docstring).

    Location latent z = c_s + w (s uniform over `scenes` types, centres c_s of norm
    scene_sep sqrt(latent_dim), w ~ N(0, I_latent_dim)); content e_k(z) = z A_k / sqrt(latent_dim)
    (layer 26 mixing layer 28's content with its own). The drone map is gated by the content:
    s(z) = the nearest scene centre to z. Maps: S_k = diag(g) ((1 - sat_mix) I + sat_mix O) for the
    satellite, M_sk = diag(g_s) ((1 - view_mix - scene_mix) I + view_mix O_k + scene_mix O_sk) for
    scene s (a common rotation O_k shared by all scenes and the scene's own O_sk, blended with the
    identity; g log-normal gains, std gain_spread; O orthogonal).
    satellite: L2(e_k(z) S_k + m_sat + sat_noise n);
    drone:     u = e_k(z) M_sk;  y = softsign(a u) / a with a = saturation sqrt(dim) (channels of
               u are ~1/sqrt(dim)); a fraction f ~ U(0, occlusion_max) of y's channels (per image
               and layer) replaced by clutter N(0, (clutter_scale / sqrt(dim))^2);
               L2(y + o_sk + m_drone + drone_noise n)."""

    def __init__(self, rng, dim: int, k: dict):
        self.k, self.n_regimes, self.dim = k, 1, dim
        d = k["latent_dim"]
        self._content_maps(rng, d, dim, k["layer26_mix"])
        self.centres = rng.standard_normal((k["scenes"], d)) * k["scene_sep"]
        self.layer = {}
        for layer in LAYERS:
            self.layer[layer] = {
                "S": gain_blend_map(rng, dim, k["gain_spread"], k["sat_mix"]),
                "M": self._scene_maps(rng, dim),
                "o": gauss_vec(rng, (k["scenes"], dim), k["scene_offset"]),
                "m_sat": gauss_vec(rng, (dim,), k["sat_offset"]),
                "m_drone": gauss_vec(rng, (dim,), k["domain_offset"]),
            }

    def _scene_maps(self, rng, dim: int) -> np.ndarray:
        """diag(g_s) ((1 - view_mix - scene_mix) I + view_mix O + scene_mix O_s): a common
        oblique-view rotation O shared by every scene and each scene's own O_s, blended with the
        identity, through per-scene channel gains g_s."""
        k, common = self.k, orthogonal(rng, dim)
        keep = (1 - k["view_mix"] - k["scene_mix"]) * np.eye(dim) + k["view_mix"] * common
        return np.stack([np.exp(k["gain_spread"] * rng.standard_normal(dim))[:, None]
                         * (keep + k["scene_mix"] * orthogonal(rng, dim))
                         for _ in range(k["scenes"])])

    def latents(self, rng, n: int) -> np.ndarray:
        scene = rng.integers(0, self.k["scenes"], n)
        return self.centres[scene] + rng.standard_normal((n, self.k["latent_dim"]))

    def scene(self, z) -> np.ndarray:
        """The scene type of each location, read from its content: the nearest centre."""
        return np.argmin(((z[:, None, :] - self.centres[None]) ** 2).sum(-1), axis=1)

    def satellite(self, rng, z) -> dict:
        return {layer: _finish(x @ self.layer[layer]["S"] + self.layer[layer]["m_sat"]
                               + gauss_vec(rng, x.shape, self.k["sat_noise"]))
                for layer, x in self.clean(z).items()}

    def drone(self, rng, z, flight, regime) -> dict:
        k, n, scene, out = self.k, len(z), self.scene(z), {}
        a = k["saturation"] * np.sqrt(self.dim)
        for layer, x in self.clean(z).items():
            p = self.layer[layer]
            u = np.zeros_like(x)
            for s in range(k["scenes"]):   # a handful of scenes, each mapping its rows at once
                rows = scene == s
                u[rows] = x[rows] @ p["M"][s]
            y = (a * u) / (1 + np.abs(a * u)) / a
            frac = rng.uniform(0, k["occlusion_max"], (n, 1))
            occluded = rng.random((n, self.dim)) < frac
            clutter = rng.standard_normal((n, self.dim)) * (k["clutter_scale"] / np.sqrt(self.dim))
            y = np.where(occluded, clutter, y)
            y = y + p["o"][scene] + p["m_drone"]
            out[layer] = _finish(y + gauss_vec(rng, x.shape, k["drone_noise"]))
        return out


class Altitude(_Linear):
    """A per-flight altitude that sets a continuous drone distortion, and drone-only detail (see
    the module docstring).

    Location latent z ~ N(0, I_latent_dim) and detail latent h ~ N(0, I_detail_dim) (the drone's
    alone); content e_k(z) = z A_k / sqrt(latent_dim), layer 26 mixing layer 28's content with its
    own. Flight altitude a ~ U(0, 1), each image a_i = clip(a + altitude_jitter eps, 0, 1); depth
    t_i = 1 - a_i. Latent gains: z_j (1 - t_i (1 - f_j)), f_j ~ U(survive_min, 1) fixed (a low
    flight loses part of the layout). Rotation flow of layer k: R_k(t) = Q_k blockdiag(rot(b_j +
    t theta_j)) Q_k^T on the first rot_frac of Q_k's planes: a fixed oblique-view angle
    b_j ~ U(0, base_angle) that every drone image has, plus theta_j ~ U(0, theta_max) per unit of
    depth (layer 26: theta_max * layer26_strength); Q_k orthogonal.
    satellite: L2(e_k(z) + m_sat + sat_noise n);
    drone:     L2(R_k(t_i) applied to e_k(gains * z) + t_i detail_gain h D_k / sqrt(detail_dim)
                  + (1 + t_i) m_drone / 2 + drone_noise n)   (D_k (detail_dim, dim) Gaussian)."""

    def __init__(self, rng, dim: int, k: dict):
        self.k, self.n_regimes, self.dim = k, 1, dim
        d = k["latent_dim"]
        self._content_maps(rng, d, dim, k["layer26_mix"])
        self.survive = rng.uniform(k["survive_min"], 1.0, d)
        planes = int(k["rot_frac"] * dim) // 2
        self.layer = {}
        for layer, strength in ((28, 1.0), (26, k["layer26_strength"])):
            self.layer[layer] = {
                "Q": orthogonal(rng, dim),
                "base": rng.uniform(0, k["base_angle"], planes),
                "theta": rng.uniform(0, k["theta_max"] * strength, planes),
                "D": rng.standard_normal((k["detail_dim"], dim)) / np.sqrt(dim),
                "m_sat": gauss_vec(rng, (dim,), k["sat_offset"]),
                "m_drone": gauss_vec(rng, (dim,), k["domain_offset"]),
            }

    def latents(self, rng, n: int) -> np.ndarray:
        """Layout and detail latents side by side: (n, latent_dim + detail_dim)."""
        return rng.standard_normal((n, self.k["latent_dim"] + self.k["detail_dim"]))

    def clean(self, z) -> dict:
        return super().clean(z[:, : self.k["latent_dim"]])

    def satellite(self, rng, z) -> dict:
        return {layer: _finish(x + self.layer[layer]["m_sat"] + gauss_vec(rng, x.shape, self.k["sat_noise"]))
                for layer, x in self.clean(z).items()}

    def _flow(self, x: np.ndarray, t: np.ndarray, p: dict) -> np.ndarray:
        """Each row x_i turned by R(t_i): in Q's basis, plane j rotated by b_j + t_i theta_j."""
        y = x @ p["Q"]
        planes = len(p["theta"])
        a, b = y[:, 0:2 * planes:2], y[:, 1:2 * planes:2]
        angle = p["base"][None] + t[:, None] * p["theta"][None]
        cos, sin = np.cos(angle), np.sin(angle)
        y[:, 0:2 * planes:2], y[:, 1:2 * planes:2] = a * cos - b * sin, a * sin + b * cos
        return y @ p["Q"].T

    def drone(self, rng, z, flight, regime) -> dict:
        k, d = self.k, self.k["latent_dim"]
        altitude = rng.uniform(0, 1, int(flight.max()) + 1)[flight]
        t = 1 - np.clip(altitude + k["altitude_jitter"] * rng.standard_normal(len(z)), 0, 1)
        layout = z[:, :d] * (1 - t[:, None] * (1 - self.survive[None]))
        detail = z[:, d:] / np.sqrt(k["detail_dim"])
        out = {}
        for layer, x in super().clean(layout).items():
            p = self.layer[layer]
            y = self._flow(x, t, p) + k["detail_gain"] * t[:, None] * (detail @ p["D"])
            y = y + (1 + t[:, None]) * p["m_drone"] / 2
            out[layer] = _finish(y + gauss_vec(rng, x.shape, k["drone_noise"]))
        return out


FAMILIES = {"manifold": Manifold, "regimes": Regimes, "flightshift": FlightShift,
            "neighbours": Neighbours, "outliers": Outliers, "scenes": Scenes, "altitude": Altitude}

DEFAULTS = {
    "manifold": {
        "dim": 240, "train_locs": 200, "test_locs": 200, "views": 8, "distractors": 50,
        "latent_dim": 16, "embed_gain": 2.0, "redundant_frac": 0.25, "layer26_mix": 0.6,
        "experts": 4, "expert_mix": 0.65, "expert_gain": 1.5, "expert_offset": 0.5,
        "domain_offset": 1.5, "sat_offset": 1.0, "nuisance_dirs": 4, "nuisance_std": 0.8,
        "sat_noise": 0.15, "drone_noise": 0.4, "cls_noise": 0.3,
    },
    "regimes": {
        "dim": 480, "train_locs": 400, "test_locs": 200, "views": 3, "distractors": 50,
        "content_frac": 0.2, "layer26_mix": 0.7, "regimes": 3, "rotated_frac": 0.8,
        "regime_offset": 0.3, "domain_offset": 1.5, "sat_offset": 1.0, "nuisance_dirs": 6,
        "nuisance_std": 1.0, "sat_noise": 0.2, "drone_noise": 1.2, "cls_noise": 0.3,
    },
    "flightshift": {
        "dim": 1280, "train_locs": 100, "test_locs": 200, "views": 50, "distractors": 50,
        "latent_dim": 48, "layer26_mix": 0.6, "gain_spread": 0.6, "mix": 0.8,
        "flight_offset": 0.6, "domain_offset": 1.5, "sat_offset": 1.0, "sat_noise": 0.2,
        "drone_noise": 1.0, "cls_noise": 0.3,
    },
    "neighbours": {
        "dim": 800, "train_locs": 800, "test_locs": 200, "views": 6, "distractors": 50,
        "map_locations": 2000, "field_features": 256, "length_scale": 1.5, "layer26_mix": 0.6,
        "regimes": 2, "gain_spread": 0.7, "mix": 0.9, "view_shift": 0.4, "domain_offset": 1.5,
        "sat_offset": 1.0, "sat_noise": 0.2, "drone_noise": 0.6, "cls_noise": 0.3,
    },
    "outliers": {
        "dim": 640, "train_locs": 500, "test_locs": 200, "views": 5, "distractors": 50,
        "content_alpha": 1.0, "layer26_mix": 0.6, "massive_dims": 4, "massive_scale": 2.0,
        "massive_spread": 0.2, "gain_spread": 0.5, "sat_mix": 0.5, "drone_mix": 0.7,
        "clutter_max": 0.4, "flight_gain": 0.2, "domain_offset": 1.5, "sat_offset": 1.0,
        "sat_noise": 0.2, "drone_noise": 0.5, "cls_noise": 0.3,
    },
    "scenes": {
        "dim": 560, "train_locs": 1000, "test_locs": 200, "views": 3, "distractors": 50,
        "latent_dim": 64, "scenes": 4, "scene_sep": 1.0, "layer26_mix": 0.6, "gain_spread": 0.4,
        "view_mix": 0.45, "scene_mix": 0.35, "scene_offset": 0.3, "saturation": 1.5,
        "occlusion_max": 0.3, "clutter_scale": 1.0, "sat_mix": 0.3, "domain_offset": 1.5,
        "sat_offset": 1.0, "sat_noise": 0.2, "drone_noise": 0.5, "cls_noise": 0.3,
    },
    "altitude": {
        "dim": 640, "train_locs": 600, "test_locs": 200, "views": 4, "distractors": 50,
        "latent_dim": 48, "layer26_mix": 0.6, "detail_dim": 16, "detail_gain": 0.8,
        "survive_min": 0.2, "rot_frac": 0.9, "base_angle": 3.14, "theta_max": 1.6, "layer26_strength": 0.4,
        "altitude_jitter": 0.05, "domain_offset": 1.5, "sat_offset": 1.0, "sat_noise": 0.2,
        "drone_noise": 0.5, "cls_noise": 0.3,
    },
}
