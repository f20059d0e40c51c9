"""Candidate heads as pure functions of train arrays (issue 8): no I/O, no labels.

Input: :class:`TrainViews` (satellite rows and drone rows per layer, L2-normalised, and the drone
grouping: the flight folders). Output: a :class:`geoalign_store.method.headset.Heads`, whose `embed`
serves selection, scoring and locate alike. Candidates:

- ``centre``: each view's train mean removed per layer (label-free domain centring);
- ``whiten(L)``: PCA whitening of the L leading directions of the centred drone rows (ISMS);
- ``ridge(K)`` / ``orth(K)``: K ridge or orthogonal linear maps drone -> satellite, fitted to
  drone flights matched one-to-one with satellites (the Hungarian assignment of flight means in
  a teacher space), by EM over the drone images; a gate picks one map per drone image, or (the
  best-of rule, ``ridge(K, best of maps)``) each (drone, satellite) pair scores as its best map;
- ``agra``: AGRA taught by the flight teacher (teacher.agra_candidate, the improved recipe);
- fusions of these (headset.Heads with two streams and a weight).
Every map acts on the leading principal subspace only and is the identity elsewhere, so it is
determined by the data it saw and never moves directions the data do not constrain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .headset import Heads, l2n
from .heads import ISMS
from .map_bank import MapBank
from .shrinkage import ridge, ridge_lambda
from .teacher import flight_means, flight_rows  # noqa: F401  (flight_means: used by selection too)


@dataclass
class TrainViews:
    sat: dict            # layer -> (n_sat, C) float32, L2-normalised
    drone: dict          # layer -> (n_drone, C)
    groups: np.ndarray   # (n_drone,) flight ids: grouping only, never compared with satellites
    layers: tuple

    def drones(self, rows: np.ndarray) -> "TrainViews":
        return TrainViews(self.sat, {k: v[rows] for k, v in self.drone.items()}, self.groups[rows],
                          self.layers)


def flight_sample(groups: np.ndarray, per_flight: int) -> np.ndarray:
    """Up to `per_flight` rows of every group, evenly spaced (deterministic), in row order."""
    return np.sort(flight_rows(groups, per_flight))


def centring(views: TrainViews) -> Heads:
    means = {f"{v}.layer_{k}": getattr(views, attr)[k].mean(0, dtype=np.float64).astype(np.float32)
             for v, attr in (("satellite", "sat"), ("drone", "drone")) for k in views.layers}
    return Heads(views.layers, means, [("centre", None)], [1.0])


@dataclass
class Basis:
    """Principal axes of the centred concat drone rows."""
    mean: np.ndarray      # (D,)
    axes: np.ndarray      # (D, D) columns, by decreasing variance
    var: np.ndarray       # (D,)


def principal_basis(centre: Heads, views: TrainViews, per_flight: int = 16) -> Basis:
    """From drone rows only (a sample of every flight): the satellites stay out of every fitted
    direction, so a held-out flight's satellite is as new to the whitening as a test location's
    (whitening many directions fitted on few satellites singles each of them out)."""
    rows = flight_sample(views.groups, per_flight)
    x = centre.stream_input({k: v[rows] for k, v in views.drone.items()}, "drone", "isms")
    x = torch.from_numpy(x.astype(np.float64))
    mean = x.mean(0)
    xc = x - mean
    var, axes = torch.linalg.eigh(xc.T @ xc / len(x))
    order = torch.argsort(var, descending=True)
    return Basis(mean.numpy(), axes[:, order].numpy(), np.maximum(var[order].numpy(), 1e-12))


def whitening(centre: Heads, basis: Basis, latent: int) -> Heads:
    """ISMS as closed-form PCA whitening of `latent` directions (its BatchNorm holds the PCA)."""
    axes = torch.from_numpy(basis.axes[:, :latent].T.copy()).float()
    isms = ISMS(axes.shape[1], latent)
    with torch.no_grad():
        isms.encoder.weight.copy_(axes)
        isms.decoder.weight.copy_(axes.T)
        isms.decoder.bias.copy_(torch.from_numpy(basis.mean).float())
        isms.bn_whiten.running_mean.copy_(axes @ torch.from_numpy(basis.mean).float())
        isms.bn_whiten.running_var.copy_(torch.from_numpy(basis.var[:latent]).float())
    return centre.with_streams([("isms", isms.eval())], [1.0])


def assign(flight_emb: np.ndarray, sat_emb: np.ndarray) -> np.ndarray:
    """One-to-one assignment of flights (rows) to satellites maximising total cosine: the
    satellite index of each flight (n_flights <= n_sat; more flights: the extra get -1)."""
    return assign_similar(flight_emb @ sat_emb.T)


def assign_similar(sim: np.ndarray) -> np.ndarray:
    """`assign` from the flights x satellites similarities."""
    from scipy.optimize import linear_sum_assignment
    rows, cols = linear_sum_assignment(-sim)
    out = np.full(len(sim), -1)
    out[rows] = cols
    return out


def flight_pairs(centre: Heads, views: TrainViews, teacher: Heads, per_flight: int = 8):
    """Drone rows (a sample of every flight) in the centred space, each with the satellite its
    flight is assigned one-to-one in the `teacher` space: -> (x, y, flight index of each row)."""
    rows = flight_sample(views.groups, per_flight)
    drone = {k: v[rows] for k, v in views.drone.items()}
    t_sat, t_drone = teacher.embed(views.sat, "satellite"), teacher.embed(drone, "drone")
    means, inverse = flight_means(t_drone, views.groups[rows])
    match = assign(means, t_sat)
    keep = match[inverse] >= 0
    x = centre.embed(drone, "drone")[keep]
    y = centre.embed(views.sat, "satellite")[match[inverse][keep]]
    return x, y, inverse[keep]


@dataclass(frozen=True)
class MapPairs:
    """What every K of one kind and teacher fits on: the flights' drone rows and their matched
    satellites in map coordinates (the `rank` leading principal directions `q`), each row's
    flight, and the ridge shrinkage per row (None for orthogonal maps). Built once, shared by
    the K: the pairs and the shrinkage search do not depend on K."""
    x: np.ndarray
    y: np.ndarray
    flights: np.ndarray
    q: np.ndarray
    lam_per_row: float | None


def map_pairs(centre: Heads, basis: Basis, views: TrainViews, teacher: Heads, seed: int, kind: str = "ridge",
              rank: int = 512, ridge_folds: int = 1, flight_xy: tuple | None = None) -> MapPairs:
    """The flights' one-to-one satellite matches in the `teacher` space, in the `rank` leading
    principal directions; kind="ridge": with the shrinkage chosen on `ridge_folds` fifths of the
    flights, kind="orth": none (orthogonal maps). `flight_xy`: `flight_pairs`' answer for this
    teacher, when it is at hand (every kind and rank of a round shares it)."""
    if kind not in ("ridge", "orth"):
        raise ValueError(f"map kind must be ridge or orth, got {kind!r}")
    x, y, flights = flight_xy or flight_pairs(centre, views, teacher)
    q = basis.axes[:, :min(rank, basis.axes.shape[1])].astype(np.float32)
    xq, yq = x @ q, y @ q
    lam = ridge_lambda(xq, yq, flights, seed, ridge_folds) / len(xq) if kind == "ridge" else None
    return MapPairs(xq, yq, flights, q, lam)


def maps(centre: Heads, views: TrainViews, pairs: MapPairs, n_maps: int, seed: int, em_iters: int = 6) -> dict:
    """K linear maps drone -> satellite of the pairs' leading principal directions (identity
    elsewhere), fitted to `pairs` (map_pairs: ridge maps with its shrinkage, or orthogonal maps)
    by EM over the drone images (each image to the map that aligns it best with its flight's
    satellite). -> {"lda": heads whose gate is a linear discriminant of the EM's split,
    "subspace": heads that pick the map landing most in the satellites' principal subspace,
    "best": heads with no gate, each pair scored by its best map (MapBank's best_of)} (one entry,
    "lda", for a single map)."""
    xq, yq, q = pairs.x, pairs.y, pairs.q
    if pairs.lam_per_row is None:
        fit_one = lambda a, b: _procrustes(a, b, q.shape[1])  # noqa: E731
    else:
        fit_one = lambda a, b: ridge(a, b, pairs.lam_per_row * len(a))  # noqa: E731
    label = kmeans(xq, n_maps, seed)
    xt, yt = torch.from_numpy(xq), torch.from_numpy(l2n(yq))
    for _ in range(em_iters if n_maps > 1 else 1):
        mats = np.stack([fit_one(xq[label == j], yq[label == j]) for j in range(n_maps)])
        fit = torch.stack([(torch.nn.functional.normalize(xt @ torch.from_numpy(m), dim=1) * yt).sum(1)
                           for m in mats], dim=1)       # alignment of each row under each map
        new = fit.argmax(1).numpy()
        if np.array_equal(new, label) or np.bincount(new, minlength=n_maps).min() < 2:
            break
        label = new
    gate = _lda_gate(xq, label, n_maps)
    out = {"lda": centre.with_streams([("maps", MapBank.build(q, mats, *gate))], [1.0])}
    if n_maps > 1:
        axes = _principal_share(centre.embed(views.sat, "satellite") @ q)
        out["subspace"] = centre.with_streams([("maps", MapBank.build(q, mats, *gate, axes))], [1.0])
        out["best"] = centre.with_streams([("maps", MapBank.build(q, mats, best_of=True))], [1.0])
    return out


def _principal_share(sat: np.ndarray, share: float = 0.9) -> np.ndarray:
    """The satellites' leading principal axes (in map coordinates) holding `share` of their
    variance: where a drone image must land to look like a satellite."""
    centred = sat - sat.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    energy = np.cumsum(sv ** 2) / max(float((sv ** 2).sum()), 1e-12)
    m = int(min(np.searchsorted(energy, share) + 1, max(1, sat.shape[1] // 2)))
    return vt[:m].T.astype(np.float32)


def _procrustes(x: np.ndarray, y: np.ndarray, r: int) -> np.ndarray:
    """Orthogonal R maximising tr(R^T x^T y), shrunk towards the identity (weight: one row's
    worth of data per direction) so that directions without data stay put."""
    m = x.T.astype(np.float64) @ y + (len(x) / r) * np.eye(r) * 0.1
    u, _, vt = np.linalg.svd(m)
    return (u @ vt).astype(np.float32)


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 10) -> np.ndarray:
    """Seeded Lloyd iterations: the EM's starting split of the drone images, the regions of the
    satellites (holdout.py)."""
    if k == 1:
        return np.zeros(len(x), int)
    centres = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
    for _ in range(iters):
        label = ((centres ** 2).sum(1) - 2 * x @ centres.T).argmin(1)
        centres = np.stack([x[label == j].mean(0) if (label == j).any() else centres[j] for j in range(k)])
    return label


def _lda_gate(x: np.ndarray, label: np.ndarray, k: int, dims: int = 64):
    """Linear discriminant on the leading `dims` coordinates: -> (weight (k, r), bias (k,))."""
    r = x.shape[1]
    d = min(dims, r)
    z = x[:, :d].astype(np.float64)
    means = np.stack([z[label == j].mean(0) if (label == j).any() else z.mean(0) for j in range(k)])
    resid = z - means[label]
    cov = resid.T @ resid / max(len(z) - k, 1)
    cov += 1e-3 * np.trace(cov) / d * np.eye(d)
    w = np.linalg.solve(cov, means.T).T                      # (k, d)
    prior = np.log(np.maximum(np.bincount(label, minlength=k) / len(label), 1e-6))
    b = -0.5 * np.einsum("kd,kd->k", w, means) + prior
    weight = np.zeros((k, r))
    weight[:, :d] = w
    return weight.astype(np.float32), b.astype(np.float32)
