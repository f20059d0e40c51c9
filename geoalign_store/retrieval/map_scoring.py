"""Scoring drone photos against a map gallery, where "right" is geometric, not a label.

A tile is right for a photo when the tile's footprint contains the photo's true position (from
`photos.csv`): x0 <= x < x1 and y0 < y <= y1 in the tile's working CRS (metres), so of two tiles
that only touch, one holds the point. With overlap and several scales a photo has several right
tiles; Recall@K and AP are the official formulas over them (metrics.score_retrieval, `goods=`).
Beside them, in metres: Dis@1 (great-circle distance from the top-1 tile's centre to the truth),
the share of photos within 5/10/25/50/100 m, and SDM@K as Game4Loc computes it (GTA-UAV,
`game4loc/evaluate/visloc.py`), with distances in metres:
    SDM@K = sum_{i=1..K} (K - i + 1) exp(-s d_i) / sum_{i=1..K} (K - i + 1),   s = 0.001 / m
where d_i is the distance from the truth to the i-th ranked tile's centre.
"""

from __future__ import annotations

import numpy as np

from .. import store as st
from ..datasets import from_latlon
from .distances import distance_metrics, haversine_m

MAP_THRESHOLDS_M = (5, 10, 25, 50, 100)
SDM_KS = (1, 3, 5)
SDM_SCALE = 0.001          # Game4Loc's s, per metre
CHUNK_CELLS = 1 << 24      # photos x tiles booleans per containment block


def photo_positions(root, dataset: str, rows: np.ndarray) -> np.ndarray:
    """(n, 2) true lat/lon of the photos `rows`; refused when any is unknown."""
    latlon = st.read_coordinates(root, dataset, "test", "drone")
    known = np.zeros(len(rows), bool) if latlon is None else np.isfinite(latlon[rows]).all(axis=1)
    if not known.all():
        raise st.StoreError(f"{int((~known).sum())} of {len(rows)} photos of {dataset} have no true position: "
                            "scoring a map needs each photo's lat/lon in <photos>/photos.csv (image,lat,lon); "
                            "`geoalign locate` answers without them")
    return latlon[rows]


def footprint_goods(root, dataset: str, ds) -> tuple[np.ndarray, np.ndarray]:
    """(n_queries x slots) gallery positions of the tiles whose footprint holds each photo's
    position (padding 0), and the count per photo; in blocks of photos, no per-photo loop."""
    truth = photo_positions(root, dataset, ds.query.rows)
    tiles = st.read_tile_table(root, dataset, ds.gallery.rows)
    hits_q, hits_g = [], []
    for i, f in enumerate(st.read_map_files(root, dataset)):
        on_file = np.flatnonzero(tiles["file"] == i)
        if not len(on_file):
            continue
        x, y = from_latlon(f.crs, truth)
        x0, y0, x1, y1 = tiles["bounds"][on_file].T
        step = max(1, CHUNK_CELLS // len(on_file))
        for a in range(0, len(x), step):
            xs, ys = x[a:a + step, None], y[a:a + step, None]
            q, g = np.nonzero((x0 <= xs) & (xs < x1) & (y0 < ys) & (ys <= y1))
            hits_q.append(q + a)
            hits_g.append(on_file[g])
    q = np.concatenate(hits_q) if hits_q else np.zeros(0, np.int64)
    g = np.concatenate(hits_g) if hits_g else np.zeros(0, np.int64)
    order = np.lexsort((g, q))
    q, g = q[order], g[order]
    n_good = np.bincount(q, minlength=len(truth))
    slot = np.arange(len(q)) - np.concatenate([[0], np.cumsum(n_good)])[q]
    gidx = np.zeros((len(truth), int(n_good.max(initial=0))), np.int64)
    gidx[q, slot] = g
    return gidx, n_good


def sdm_at_k(distances_m: np.ndarray, ks=SDM_KS, scale: float = SDM_SCALE) -> dict[str, float]:
    """Game4Loc's SDM@K from (n_queries x >= max(ks)) distances of the ranked tiles, in metres."""
    out = {}
    for k in ks:
        w = np.arange(k, 0, -1, dtype=np.float64)
        out[str(k)] = float((np.exp(-scale * distances_m[:, :k]) @ w / w.sum()).mean())
    return out


def map_distance_metrics(root, dataset: str, ds, top_i: np.ndarray) -> dict:
    """Dis@1 and within 5..100 m of the top-1 tile centre, SDM@1/3/5, for a scored map set."""
    truth = photo_positions(root, dataset, ds.query.rows)
    centres = st.read_tile_table(root, dataset, ds.gallery.rows)["latlon"]
    ranked = np.where(top_i[..., None] >= 0, centres[np.maximum(top_i, 0)], np.nan)
    out = distance_metrics(ranked[:, 0], truth, MAP_THRESHOLDS_M)
    k = min(max(SDM_KS), top_i.shape[1])
    d = haversine_m(ranked[:, :k], truth[:, None, :])
    out["sdm"] = sdm_at_k(np.where(np.isfinite(d), d, np.inf), tuple(x for x in SDM_KS if x <= k))
    out["truth"] = "photos.csv positions (the drone's own position)"
    return out
