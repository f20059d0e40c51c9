"""A position finer than a tile (retrieval/map_locate.py): the ranked tiles that overlap the
top-1 vote, weighted by score; the radius is their weighted RMS spread plus each tile's own."""

import numpy as np
import pytest

pytest.importorskip("pyproj")
from geoalign_store.datasets import MapFile, cut_tiles, from_latlon  # noqa: E402
from geoalign_store.retrieval import REFINE_K, agreeing, haversine_m, refine_position  # noqa: E402

UTM32 = "EPSG:32632"


def grid_map(side_px=2000):
    from pyproj import CRS
    return MapFile("(no file)", CRS.from_user_input(UTM32).to_wkt(), (1.0, 0.0, 500_000.0, 0.0, -1.0, 5_600_000.0),
                   side_px, side_px, 1.0, False)


def tile_dict(table):
    return {"bounds": table.bounds, "file": table.file, "latlon": table.centre_latlon}


def test_the_vote_of_overlapping_tiles_at_two_scales_beats_the_top1_tile_centre():
    """Scores that fall off with the distance from the truth to a tile's centre (plus noise), as a
    backbone that retrieves well would give: the refined position is closer than the top-1's."""
    f = grid_map()
    table = cut_tiles([f], [150, 250], 0.5)
    tiles = tile_dict(table)
    centres = np.stack([(table.bounds[:, 0] + table.bounds[:, 2]) / 2, (table.bounds[:, 1] + table.bounds[:, 3]) / 2], 1)
    rng = np.random.default_rng(0)
    refined, top1 = [], []
    for _ in range(200):
        truth = np.array([500_000.0, 5_600_000.0]) + rng.uniform([300, -1700], [1700, -300])
        d = np.linalg.norm(centres - truth, axis=1)
        scores = np.exp(-(d / 120.0) ** 2) + 0.02 * rng.standard_normal(len(d))
        found = np.argsort(-scores)[:REFINE_K]
        answer = refine_position(tiles, [f], found, scores[found])
        x, y = from_latlon(f.crs, np.array([[answer["lat"], answer["lon"]]]))
        refined.append(np.hypot(x[0] - truth[0], y[0] - truth[1]))
        top1.append(d[found[0]])
        assert answer["n_tiles"] >= 2
    refined, top1 = np.array(refined), np.array(top1)
    assert refined.mean() < 0.8 * top1.mean(), (refined.mean(), top1.mean())


def test_a_lone_tile_answers_its_centre_with_the_spread_of_a_point_in_it():
    f = grid_map()
    table = cut_tiles([f], [150], 0.0)
    tiles = tile_dict(table)
    found = np.array([0, 50, 90])                     # far apart: only the top-1 agrees with itself
    assert agreeing(table.bounds[found], table.file[found]).tolist() == [True, False, False]
    answer = refine_position(tiles, [f], found, np.array([0.9, 0.8, 0.7]))
    assert haversine_m(np.array([answer["lat"], answer["lon"]]), table.centre_latlon[0]) < 0.01
    assert answer["uncertainty_m"] == pytest.approx(150 / np.sqrt(6))
    assert answer["n_tiles"] == 1
