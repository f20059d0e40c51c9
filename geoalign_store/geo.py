"""Coordinates of locations and the distance-based figures reported beside Recall@K.

Coordinates come from a `locations.csv` (`location,lat,lon[,...]`, WGS84 degrees) at the dataset
root or from `coords=PATH`; a location is an image's folder name (`<view>/<location>/<image>` in
every layout). Distances are great-circle (haversine) metres on the mean Earth radius, the
figure Game4Loc's Dis@1 reports.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

import numpy as np

from .config import ConfigError

EARTH_RADIUS_M = 6_371_008.8  # mean radius (IUGG)
THRESHOLDS_M = (25, 50, 100)


class CoordinatesError(ConfigError):
    """A coordinates file that cannot be read as `location,lat,lon`; the message says where."""


def read_locations_csv(path: str | Path) -> dict[str, tuple[float, float]]:
    """location name -> (lat, lon). Extra columns are ignored; a repeated location is an error."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except OSError as e:
        raise CoordinatesError(f"cannot read coordinates {path}: {e}") from e
    if not rows or header[:3] != ["location", "lat", "lon"]:
        raise CoordinatesError(f"{path}: expected a header `location,lat,lon[,...]` and one row "
                               f"per location, got {header[:3] or 'nothing'}")
    out: dict[str, tuple[float, float]] = {}
    for line, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        try:
            lat, lon = float(row["lat"]), float(row["lon"])
        except ValueError:
            raise CoordinatesError(f"{path} line {line}: lat/lon must be numbers, got "
                                   f"{row['lat']!r}, {row['lon']!r}") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise CoordinatesError(f"{path} line {line}: ({lat}, {lon}) is not a WGS84 position")
        if row["location"] in out:
            raise CoordinatesError(f"{path} line {line}: location {row['location']!r} repeated")
        out[row["location"]] = (lat, lon)
    return out


def location_of(image_id: str) -> str:
    """The location folder of an image id (`.../<location>/<image>`)."""
    return PurePosixPath(str(image_id)).parent.name


def coordinates_for(ids, table: dict[str, tuple[float, float]]) -> np.ndarray:
    """(N, 2) lat/lon of each image's location, NaN where the table does not have it. A numeric
    folder also matches its number written without leading zeros (`0839` and `839`)."""
    numeric = {str(int(k)): v for k, v in table.items() if k.isdigit()}
    if len(ids) == 0:
        return np.full((0, 2), np.nan)
    # one lookup per folder, not per image (University-1652's drone view: 51,355 ids, 701 folders)
    folders, inverse = np.unique(np.strings.rpartition(np.asarray(ids, dtype=str), "/")[0], return_inverse=True)
    per_folder = np.full((len(folders), 2), np.nan)
    for row, folder in enumerate(folders.tolist()):
        loc = location_of(f"{folder}/_")
        hit = table.get(loc) or (numeric.get(str(int(loc))) if loc.isdigit() else None)
        if hit is not None:
            per_folder[row] = hit
    return per_folder[inverse.reshape(-1)]


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
    from . import store as st
    q = st.read_coordinates(root, dataset, "test", ds.query.view)
    g = st.read_coordinates(root, dataset, "test", ds.gallery.view)
    if q is None or g is None or top_i.shape[1] == 0:
        return None
    first = top_i[:, 0]
    predicted = np.where(first[:, None] >= 0, g[ds.gallery.rows[np.maximum(first, 0)]], np.nan)
    return distance_metrics(predicted, q[ds.query.rows])


def describe_distances(m: dict) -> str:
    within = ", ".join(f"{100 * v:.1f}% within {k} m" for k, v in m["within_m"].items())
    return f"Dis@1 {m['dis@1_m']:.1f} m over {m['n_with_coords']} queries with coordinates; {within}"
