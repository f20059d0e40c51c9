"""A position finer than a tile, on a map gallery: the tiles ranked near the top that agree with
the top-1 (their footprints overlap it: neighbours at the same scale and the tiles of other
scales that cover the same ground) vote for where the photo was taken.

    weight_i  = exp((s_i - s_1) / spread),   spread = std of the top REFINE_K scores
    position  = sum_i weight_i centre_i / sum_i weight_i           (in the map's metres)
    radius_m  = sqrt(sum_i weight_i (|centre_i - position|^2 + side_i^2 / 6) / sum_i weight_i)

The radius is the weighted RMS distance from the answer of a point anywhere in the agreeing tiles
(side^2 / 6: a uniform point's mean squared distance from its square's centre), so one lonely
150 m tile gives ~61 m and agreeing tiles that spread out give more. Also the map around the
answer, for the answer's picture.
"""

from __future__ import annotations

import numpy as np

from ..datasets import from_latlon, to_latlon
from ..features import open_grid, read_window

REFINE_K = 20          # ranked tiles considered for the vote


def agreeing(bounds: np.ndarray, file: np.ndarray) -> np.ndarray:
    """Which of the ranked tiles overlap the first one (same map file)."""
    b0 = bounds[0]
    return ((file == file[0]) & (bounds[:, 0] < b0[2]) & (b0[0] < bounds[:, 2])
            & (bounds[:, 1] < b0[3]) & (b0[1] < bounds[:, 3]))


def refine_position(tiles: dict, files: list, found: np.ndarray, scores: np.ndarray) -> dict | None:
    """The vote of one photo's ranked tiles (gallery positions `found`, best first; -1 = none)."""
    keep = found >= 0
    found, scores = found[keep], np.asarray(scores, np.float64)[keep]
    if not len(found):
        return None
    bounds, file = tiles["bounds"][found], tiles["file"][found]
    votes = agreeing(bounds, file)
    spread = max(float(scores.std()), 1e-6)
    w = np.exp((scores[votes] - scores[0]) / spread)
    b = bounds[votes]
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    x, y = float(w @ cx / w.sum()), float(w @ cy / w.sum())
    side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    radius = float(np.sqrt(w @ ((cx - x) ** 2 + (cy - y) ** 2 + side ** 2 / 6) / w.sum()))
    lat, lon = to_latlon(files[int(file[0])].crs, np.array(x), np.array(y)).tolist()
    return {"lat": lat, "lon": lon, "uncertainty_m": radius, "n_tiles": int(votes.sum()),
            "file": int(file[0])}


def map_around(f, latlon_points: np.ndarray, half_m: float, max_px: int = 512) -> dict:
    """The map around a point (the first of `latlon_points`), resampled to at most max_px a side,
    and where every point falls on it: {"pixels": (H, W, 3) uint8, "xy": (n, 2) pixel x, y,
    "m_per_px": ground metres per pixel}."""
    x, y = from_latlon(f.crs, np.asarray(latlon_points, np.float64))
    a, _, c, _, e, g = f.transform
    col, row = (x[0] - c) / a, (y[0] - g) / e
    half = half_m / abs(a * f.metres_per_unit)
    c0, r0 = int(max(0, col - half)), int(max(0, row - half))
    c1, r1 = int(min(f.width, col + half)), int(min(f.height, row + half))
    scale = min(1.0, max_px / max(c1 - c0, r1 - r0, 1))
    out_hw = (max(1, int((r1 - r0) * scale)), max(1, int((c1 - c0) * scale)))
    with open_grid(f) as grid:
        bands = read_window(grid, (c0, r0, c1 - c0, r1 - r0), out_hw).filled(0)
    rgb = np.repeat(bands, 3, axis=0) if bands.shape[0] == 1 else bands[:3]
    px = ((x - c) / a - c0) * out_hw[1] / (c1 - c0)
    py = ((y - g) / e - r0) * out_hw[0] / (r1 - r0)
    return {"pixels": np.moveaxis(rgb, 0, 2).astype(np.uint8), "xy": np.stack([px, py], axis=1),
            "m_per_px": (c1 - c0) * abs(a) * f.metres_per_unit / out_hw[1]}
