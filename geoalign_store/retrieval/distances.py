"""The distance-based figures reported beside Recall@K: how far the top-1 answer is, in metres.

Distances are great-circle (haversine) metres on the mean Earth radius, the figure Game4Loc's
Dis@1 reports, between the coordinates a store holds per row (datasets/coordinates.py).
"""

from __future__ import annotations

import numpy as np

from .. import store as st

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
THRESHOLDS_M = (25, 50, 100)


def haversine_m(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance in metres between lat/lon rows of `a` and `b` (broadcasting)."""
    lat1, lon1 = np.radians(a[..., 0]), np.radians(a[..., 1])
    lat2, lon2 = np.radians(b[..., 0]), np.radians(b[..., 1])
    h = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def distance_metrics(predicted: np.ndarray, truth: np.ndarray,
                     thresholds=THRESHOLDS_M) -> dict | None:
    """Dis@1 (mean top-1 error in metres) and the share of queries within each threshold, over
    the queries whose truth and prediction both have coordinates; None when none has."""
    known = np.isfinite(predicted).all(axis=1) & np.isfinite(truth).all(axis=1)
    if not known.any():
        return None
    d = haversine_m(predicted[known], truth[known])
    return {"dis@1_m": float(d.mean()), "n_with_coords": int(known.sum()),
            "within_m": {str(t): float((d <= t).mean()) for t in thresholds}}


def pool_distance_metrics(subsets: dict[str, dict]) -> dict | None:
    """Subsets' distance figures pooled over their queries with coordinates."""
    rows = [m for m in subsets.values() if "dis@1_m" in m]
    if not rows:
        return None
    n = np.array([m["n_with_coords"] for m in rows], np.float64)
    mean = lambda values: float(np.dot(n, values) / n.sum())  # noqa: E731
    return {"dis@1_m": mean([m["dis@1_m"] for m in rows]), "n_with_coords": int(n.sum()),
            "within_m": {k: mean([m["within_m"][k] for m in rows]) for k in rows[0]["within_m"]}}


def top1_distance_metrics(root, dataset: str, ds, top_i: np.ndarray) -> dict | None:
    """Distance figures of a scored direction set (`ds`: queries and gallery rows of the test
    split) from its top-k gallery indices; None when either view has no coordinates."""
    q = st.read_coordinates(root, dataset, "test", ds.query.view)
    g = st.read_coordinates(root, dataset, "test", ds.gallery.view)
    if q is None or g is None or top_i.shape[1] == 0:
        return None
    first = top_i[:, 0]
    predicted = np.where(first[:, None] >= 0, g[ds.gallery.selection[np.maximum(first, 0)]], np.nan)
    return distance_metrics(predicted, q[ds.query.rows])


def describe_distances(m: dict) -> str:
    within = ", ".join(f"{100 * v:.1f}% within {k} m" for k, v in m["within_m"].items())
    return f"Dis@1 {m['dis@1_m']:.1f} m over {m['n_with_coords']} queries with coordinates; {within}"
