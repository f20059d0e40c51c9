"""Tests for the procedurally generated demo dataset (geoalign_store.datasets.demo_scenes)."""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import pytest
from PIL import Image

from geoalign_store.datasets import demo_scenes as demo_data, default_demo_root, generate_demo
from geoalign_store.datasets.demo_scenes import _perspective_coeffs

SMALL = dict(n_train=3, n_test=2, n_distractors=2, drone_views=2, image_size=64)


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(path: pathlib.Path) -> np.ndarray:
    return np.asarray(Image.open(path), np.float32)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> pathlib.Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "small", seed=0, **SMALL)


def test_layout_and_counts(small):
    assert isinstance(small, pathlib.Path)
    listing = lambda *parts: sorted(p.name for p in small.joinpath(*parts).iterdir())  # noqa: E731
    assert sorted(p.name for p in small.iterdir()) == ["_demo.json", "locations.csv", "test", "train"]
    assert listing("train", "satellite") == listing("train", "drone") == ["0000", "0001", "0002"]
    assert listing("test", "satellite") == ["0003", "0004", "0005", "0006"]  # 2 queries + 2 distractors
    assert listing("test", "drone") == ["0003", "0004"]
    for split in ("train", "test"):
        for loc in listing(split, "satellite"):
            assert listing(split, "satellite", loc) == ["sat.png"]
        for loc in listing(split, "drone"):
            assert listing(split, "drone", loc) == ["drone-00.png", "drone-01.png"]
    meta = json.loads((small / "_demo.json").read_text())
    assert meta["params"] == dict(SMALL, seed=0)
    assert meta["distractors"] == ["0005", "0006"]


def test_images_are_rgb_png_of_image_size(small):
    paths = sorted(small.rglob("*.png"))
    assert len(paths) == 7 + 5 * 2
    for path in paths:
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (64, 64))


def test_same_seed_is_byte_identical(small, tmp_path):
    again = generate_demo(tmp_path / "again", seed=0, **SMALL)
    assert _files(again) == _files(small)


def test_location_does_not_depend_on_other_locations(small, tmp_path):
    fewer = generate_demo(tmp_path / "fewer", seed=0, **dict(SMALL, n_train=1, n_test=1, n_distractors=0))
    for rel in ("train/satellite/0000/sat.png", "train/drone/0000/drone-01.png"):
        assert (fewer / rel).read_bytes() == (small / rel).read_bytes()


def test_different_seed_gives_different_images(small, tmp_path):
    other = generate_demo(tmp_path / "other", seed=1, **SMALL)
    for rel in ("train/satellite/0000/sat.png", "test/drone/0003/drone-00.png"):
        assert np.abs(_pixels(other / rel) - _pixels(small / rel)).mean() > 5


def test_locations_and_views_differ(small):
    sats = [_pixels(p) for p in sorted(small.glob("*/satellite/*/sat.png"))]
    for i in range(len(sats)):
        for j in range(i + 1, len(sats)):
            assert np.abs(sats[i] - sats[j]).mean() > 5
    sat = _pixels(small / "train/satellite/0001/sat.png")
    views = [_pixels(p) for p in sorted((small / "train/drone/0001").glob("*.png"))]
    assert all(np.abs(v - sat).mean() > 3 for v in views)
    assert np.abs(views[0] - views[1]).mean() > 3
    # same place: the drone views' colour statistics are close to their own satellite tile's
    own = np.abs(np.mean(views, axis=(0, 1, 2)) - sat.mean(axis=(0, 1))).mean()
    assert own < 40


def test_second_call_does_not_rewrite(small):
    before = {p: p.stat().st_mtime_ns for p in small.rglob("*")}
    assert generate_demo(small, seed=0, **SMALL) == small
    assert {p: p.stat().st_mtime_ns for p in small.rglob("*")} == before


def test_different_parameters_raise_naming_them(small):
    with pytest.raises(ValueError, match="drone_views"):
        generate_demo(small, seed=0, **dict(SMALL, drone_views=3))
    with pytest.raises(ValueError, match="seed"):
        generate_demo(small, seed=7, **SMALL)
    with pytest.raises(ValueError, match="n_train"):
        generate_demo(small)  # the defaults differ from SMALL


def test_existing_non_demo_directory_is_refused(tmp_path):
    root = tmp_path / "busy"
    root.mkdir()
    (root / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="not a geoalign demo"):
        generate_demo(root, **SMALL)
    assert (root / "mine.txt").read_text() == "user data"


def test_empty_directory_is_filled_and_no_temporary_left(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    generate_demo(root, **dict(SMALL, n_train=1, n_test=1, n_distractors=0, drone_views=1))
    assert (root / "_demo.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize("bad", [dict(image_size=72), dict(image_size=16), dict(n_train=0),
                                 dict(drone_views=0), dict(n_distractors=-1), dict(seed=-1)])
def test_invalid_parameters(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_demo(tmp_path / "bad", **dict(SMALL, **bad))
    assert not (tmp_path / "bad").exists()


def test_non_int_parameters(tmp_path):
    with pytest.raises(TypeError):
        generate_demo(tmp_path / "bad", **dict(SMALL, drone_views=True))
    with pytest.raises(TypeError):
        generate_demo(tmp_path / "bad", **dict(SMALL, image_size=64.0))


def test_default_demo_root(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOALIGN_CACHE", str(tmp_path / "cache"))
    assert default_demo_root() == tmp_path / "cache" / "demo"
    monkeypatch.delenv("GEOALIGN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_demo_root() == tmp_path / "home" / ".cache" / "geoalign" / "demo"


def test_perspective_coefficients_map_corners():
    src = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    dst = np.array([[3, 1], [14, 2], [12, 13], [1, 9]], float)
    a, b, c, d, e, f, g, h = _perspective_coeffs(src, dst)
    for (x, y), (u, v) in zip(src, dst):
        w = g * x + h * y + 1
        assert np.allclose([(a * x + b * y + c) / w, (d * x + e * y + f) / w], [u, v])


def test_drone_footprint_stays_inside_the_world(monkeypatch):
    monkeypatch.setattr(demo_data, "_photometric", lambda view, rng: view)
    world = Image.fromarray(np.full((3 * 64, 3 * 64, 3), 200, np.uint8))
    for loc in range(100):  # pixels from outside the world would come back black
        assert np.asarray(demo_data._drone_view(world, demo_data._rng(0, loc, 1), 64)).min() == 200


def test_defaults_generation_time(tmp_path):
    start = time.perf_counter()
    root = generate_demo(tmp_path / "defaults")
    print(f"\ndefault demo (40 train + 40 test + 10 distractors, 6 views, 128 px): "
          f"{time.perf_counter() - start:.2f} s")
    assert len(list(root.rglob("*.png"))) == 90 + 80 * 6


def test_coordinate_grid_and_fresh_views(small):
    from geoalign_store.datasets import demo_coordinates, read_locations_csv, render_drone_view
    from geoalign_store.retrieval import haversine_m
    table = read_locations_csv(small / "locations.csv")
    meta = json.loads((small / "_demo.json").read_text())
    assert sorted(table) == sorted(meta["locations"]["train"] + meta["locations"]["test"])
    grid = demo_coordinates(12)
    assert haversine_m(grid[0], grid[1]) == pytest.approx(200, abs=0.5)
    assert haversine_m(grid[0], grid[10]) == pytest.approx(200, abs=0.5)
    own = np.asarray(Image.open(small / "train/drone/0001/drone-00.png"))
    assert np.array_equal(np.asarray(render_drone_view(1, 1, seed=0, image_size=SMALL["image_size"])), own)
    fresh = np.asarray(render_drone_view(1, 99, seed=0, image_size=SMALL["image_size"]))
    assert fresh.shape == own.shape and not np.array_equal(fresh, own)
