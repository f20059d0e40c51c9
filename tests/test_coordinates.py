"""Coordinates: locations.csv recorded by extract, Dis@1 and within-25/50/100 m in score."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import extract_overrides
from geoalign_store.config import compose
from geoalign_store.datasets import (CoordinatesError, coordinates_for, location_of,
                                     read_locations_csv)
from geoalign_store.retrieval import distance_metrics, haversine_m
from pipelines import extract, score
from pipelines.cli import app


def slow_distance(a, b) -> float:
    """Arc length from the chord between the two points' unit vectors (another formula)."""
    def unit(lat, lon):
        lat, lon = math.radians(lat), math.radians(lon)
        return (math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat))
    chord = math.dist(unit(*a), unit(*b))
    return 2 * 6_371_008.8 * math.asin(min(1.0, chord / 2))


def test_haversine_and_figures_equal_a_slow_reference():
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(-80, 80, 300), rng.uniform(-180, 180, 300)])
    near = a + rng.normal(0, 6e-4, a.shape)          # tens of metres: the thresholds matter
    b = np.where(rng.random((300, 1)) < 0.5, near, np.column_stack(
        [rng.uniform(-80, 80, 300), rng.uniform(-180, 180, 300)]))
    d = haversine_m(a, b)
    want = np.array([slow_distance(p, q) for p, q in zip(a, b)])
    np.testing.assert_allclose(d, want, rtol=1e-9, atol=1e-6)
    assert haversine_m(np.array([0.0, 0.0]), np.array([1.0, 0.0])) == pytest.approx(111_195, abs=1)
    b[:7] = np.nan                                   # unknown coordinates are left out
    got = distance_metrics(b, a)
    known = want[7:]
    assert got["n_with_coords"] == 293 and got["dis@1_m"] == pytest.approx(known.mean(), rel=1e-9)
    for t in (25, 50, 100):
        assert got["within_m"][str(t)] == pytest.approx(sum(x <= t for x in known) / len(known))
    assert distance_metrics(np.full((3, 2), np.nan), a[:3]) is None


def test_locations_csv_read_and_matched_by_folder(tmp_path):
    path = tmp_path / "locations.csv"
    path.write_text("location,lat,lon,name\n0100,47.5,8.25,a\n101,47.6,8.5,b\n")
    table = read_locations_csv(path)
    ids = ["test/drone/0100/v.png", "test/satellite/0101/s.png", "test/drone/0102/v.png"]
    got = coordinates_for(ids, table)
    np.testing.assert_array_equal(got[:2], [[47.5, 8.25], [47.6, 8.5]])
    assert np.isnan(got[2]).all()
    assert coordinates_for([], table).shape == (0, 2)
    # per folder, as the per-image rule: the image's parent folder name, leading zeros optional
    ids = [f"{view}/{loc}/{i}.jpg" for view in ("drone", "a/b/satellite") for loc in ("0100", "100", "101",
           "0101", "x", "0102") for i in range(3)] + ["top.jpg", "0100/./n.jpg"]
    table = {"0100": (1.0, 2.0), "101": (3.0, 4.0), "x": (5.0, 6.0)}
    numeric = {str(int(k)): v for k, v in table.items() if k.isdigit()}
    want = [table.get(location_of(i)) or (numeric.get(str(int(location_of(i)))) if location_of(i).isdigit() else None)
            or (np.nan, np.nan) for i in ids]
    np.testing.assert_array_equal(coordinates_for(np.array(ids), table), np.array(want))
    for text, message in (("loc,lat,lon\nx,1,2\n", "header"), ("location,lat,lon\nx,north,2\n", "line 2"),
                          ("location,lat,lon\nx,95,2\n", "WGS84"), ("location,lat,lon\nx,1,2\nx,1,2\n", "repeated")):
        path.write_text(text)
        with pytest.raises(CoordinatesError, match=message):
            read_locations_csv(path)


@pytest.fixture(scope="module")
def located(folder_dataset, tmp_path_factory):
    """The folder dataset with a locations.csv (location 0104, the distractor, has none)."""
    data = tmp_path_factory.mktemp("located") / "data"
    shutil.copytree(folder_dataset, data)
    rows = [f"{loc:04d},{47.0 + 0.0003 * (loc % 100)},{8.0 + 0.0004 * (loc % 100)}" for loc in range(100, 104)]
    (data / "locations.csv").write_text("location,lat,lon\n" + "\n".join(rows) + "\n")
    store = tmp_path_factory.mktemp("stores") / "coords.zarr"
    extract.run(compose("extract", extract_overrides(store, data, "split=test")))
    return data, store


def test_extract_records_coordinates_per_row(located):
    data, store = located
    sat = zarr.open_group(str(store), mode="r")["features/folder/test/satellite"]
    latlon = sat["latlon"][:]
    assert latlon.shape == (5, 2) and np.isnan(latlon[4]).all()
    np.testing.assert_allclose(latlon[1], [47.0003, 8.0004])
    assert sat["latlon"].attrs["source"] == str(data / "locations.csv")
    assert "crc32c" in json.dumps(sat["latlon"].metadata.to_dict()["codecs"])  # like every array we write


def test_score_adds_distance_figures_when_coordinates_exist(located, tmp_path):
    data, store = located
    result = score.run(compose("score", [f"store={store}", "heads=none", "pictures=0"]))
    root = zarr.open_group(str(store), mode="r")
    top1 = [str(r[0]) for r in root["scores/folder-none/D2S/all/topk_ids"][:]]
    queries = [str(q) for q in root["scores/folder-none/D2S/all/query_ids"][:]]
    table = read_locations_csv(data / "locations.csv")
    d = [slow_distance(table[q.split("/")[-2]], table[t.split("/")[-2]])
         for q, t in zip(queries, top1) if t.split("/")[-2] in table]  # the distractor has none
    assert result["n_with_coords"] == len(d) > 0
    assert result["dis@1_m"] == pytest.approx(np.mean(d), rel=1e-9)
    assert result["within_m"]["50"] == pytest.approx(np.mean(np.array(d) <= 50))
    saved = json.loads((store / "artefacts/scores/folder-none/D2S/metrics.json").read_text())
    assert saved["dis@1_m"] == result["dis@1_m"] and "Dis@1" in (
        store / "artefacts/scores/folder-none/D2S/report.md").read_text()


def test_bad_coordinates_are_a_clear_error(folder_dataset, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("location,lat,lon\n0100,47,east\n")
    args = ["extract", *extract_overrides(tmp_path / "s.zarr", folder_dataset, "split=test", f"coords={bad}")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "lat/lon must be numbers" in result.output
    result = CliRunner().invoke(app, [*args[:-1], f"coords={tmp_path / 'none.csv'}"])
    assert result.exit_code == 2 and "does not exist" in result.output
